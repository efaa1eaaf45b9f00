"""What the client raises: one exception per kind of problem the API answers with.

Every refusal of the API is an RFC 9457 problem document; ``error_for`` turns it into the
exception of its status, carrying the document's ``detail`` (the sentence to act on), its
``title`` and ``type``, and the whole ``body`` (the reseed report of a 409 rides in it).
The classes that mean what the server's own errors mean (restcp.errors) are also those, so
``except restcp.errors.NotFound`` catches a 404 from the client too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from restcp import errors
from restcp.api.schemas import FieldError

if TYPE_CHECKING:
    from restcp.client.resources import Route


class ApiError(errors.RestcpError):
    """The API refused a request, or answered something this client cannot read.
    ``str(err)`` is the problem's detail, prefixed by the request it answered."""

    def __init__(
        self,
        detail: str,
        *,
        status: int = 0,
        title: str = "",
        type: str = "about:blank",
        body: Any = None,
        request: str = "",
    ) -> None:
        super().__init__(f"{request}: {status} {detail}" if request else detail)
        self.status = status
        self.title = title
        self.type = type
        self.detail = detail
        self.body = body
        self.request = request


class Invalid(ApiError, errors.InvalidSpec):
    """400, 413 or 422: the request was malformed or a field invalid; ``errors`` lists each
    invalid field with its message (422 only)."""

    def __init__(self, detail: str, **kw: Any) -> None:
        super().__init__(detail, **kw)
        found = self.body.get("errors", []) if isinstance(self.body, dict) else []
        self.errors = [FieldError.model_validate(e, extra="ignore") for e in found]


class Unauthorized(ApiError):
    """401: no token, or not a valid one, where the API asks for tokens."""


class Forbidden(ApiError, errors.Forbidden):
    """403: the token may not do this, or policy refuses it (a denied backend address)."""


class NotFound(ApiError, errors.NotFound):
    """404: no such app, route, backend or token."""


class Conflict(ApiError, errors.Conflict):
    """409: the request clashes with the current state (a port taken, a quota reached, an
    address another backend of the route has)."""


class Unavailable(ApiError, errors.Unavailable):
    """503: the store or the owning node cannot answer now."""


class Unreachable(Unavailable):
    """No answer at all: the API refused the connection, or did not answer in time."""


class Provisioning(ApiError):
    """202: a new route was handed to the node that serves its frontend IP, which had not
    bound it yet when the API answered. ``route`` is its handle: ``pending.route.wait()``
    (``await`` it with AsyncClient) polls until the route is served and returns it."""

    def __init__(self, detail: str, *, route: Route[Any], frontend_ip: str, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.route = route
        self.app = route.app
        self.route_id = route.id
        self.frontend_ip = frontend_ip


class NotYetApplied(ApiError):
    """202 to a change (a route updated or deleted, a backend added, replaced, updated or
    deleted): in a cluster, the change is stored, but the node serving the route's frontend
    IP had not applied it within --provision-timeout when the API answered. That node
    applies it without anyone asking (at the latest at its next resync). ``result`` is what
    the call returns once a change is applied (the route or backend handle, its ``info`` as
    stored; None for a delete); ``body`` is what a 2xx would have said, with ``"status":
    "provisioning"``."""

    def __init__(self, detail: str, *, result: Any, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.result = result


def not_yet_applied(response: httpx.Response, body: Any, result: Any) -> NotYetApplied:
    """The NotYetApplied of a change's 202 ``response`` (whose JSON is ``body``)."""
    return NotYetApplied(
        "stored; the node serving the route's frontend IP has not applied it yet",
        result=result,
        status=202,
        title="Accepted",
        body=body,
        request=f"{response.request.method} {response.request.url.path}",
    )


_BY_STATUS: dict[int, type[ApiError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    422: Invalid,
    503: Unavailable,
}


def error_for(response: httpx.Response, detail: str | None = None) -> ApiError:
    """The exception for ``response``: from its problem document, or, with ``detail``,
    for an answer this client cannot read."""
    request = f"{response.request.method} {response.request.url.path}"
    if detail is not None:
        return ApiError(detail, status=response.status_code, request=request)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    problem = body if isinstance(body, dict) else {}
    return _BY_STATUS.get(response.status_code, ApiError)(
        str(problem.get("detail") or problem.get("title") or body or response.reason_phrase),
        status=response.status_code,
        title=str(problem.get("title", response.reason_phrase)),
        type=str(problem.get("type", "about:blank")),
        body=body,
        request=request,
    )
