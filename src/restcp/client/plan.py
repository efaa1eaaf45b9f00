"""Calls to the API written once, for both clients: each is a *plan*, a generator that
yields what it needs done and is sent back the outcome, without doing any I/O itself.

    def get(self) -> Plan[RouteOut]:
        reply = yield from request("GET", "/apps/web/routes/1")
        return reply.model(RouteOut)

A plan yields a ``Request`` (and is sent the ``Reply``) or a ``Pause`` (and is sent None);
what it returns is the call's result. ``Client`` runs plans with httpx's blocking client and
``AsyncClient`` with its asyncio one (transport.py), so both speak to every endpoint through
the same code: paths, bodies, parsing and errors live here and in resources.py only.

A failed request is raised *inside* the plan (by ``request``, or thrown in by the transport
when the API cannot be reached), so a plan may catch what it expects: an undo that finds
the thing gone already, a poll that meets 404 until a route is served.
"""

from __future__ import annotations

from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from restcp.client.errors import error_for, not_yet_applied

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# What a client does with fields of an answer its models do not know: "ignore" (a newer
# server may add fields), or "forbid" (restcp's own tests: no field goes unmodelled).
UnknownFields = Literal["ignore", "forbid"]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    # The JSON body; None sends none.
    json: Any = None


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer, and how to read it into the API's models."""

    response: httpx.Response
    unknown_fields: UnknownFields = "ignore"

    @property
    def status(self) -> int:
        return self.response.status_code

    def model(self, model: type[M]) -> M:
        data = self.json()
        if self.status == 202 and isinstance(data, dict):
            # A change not applied yet (``change``): what a 2xx would have said, and
            # "status": "provisioning", which no model of a 2xx has.
            data = {name: value for name, value in data.items() if name != "status"}
        return self._validate(model, data)

    def models(self, model: type[M]) -> list[M]:
        data = self.json()
        if not isinstance(data, list):
            raise error_for(self.response, f"expected a JSON array, got {type(data).__name__}")
        return [self._validate(model, item) for item in data]

    def _validate(self, model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data, extra=self.unknown_fields)
        except ValidationError as err:
            raise error_for(
                self.response, f"the answer does not match {model.__name__}: {err}"
            ) from None

    def json(self) -> Any:
        try:
            return self.response.json()
        except ValueError as err:
            raise error_for(self.response, f"the answer is not JSON: {err}") from None


Step = Request | Pause
Plan = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Applied(Generic[T]):
    """What a change made for the length of a ``with`` block returns: the value the block
    gets, and the plan that undoes the change when the block ends."""

    value: T
    undo: Plan[None]


def request(method: str, path: str, json: Any = None, ok: Collection[int] = (200,)) -> Plan[Reply]:
    """Send one request; any status not in ``ok`` is raised as its ApiError."""
    reply: Reply = yield Request(method, path, json)
    if reply.status not in ok:
        raise error_for(reply.response)
    return reply


def change(method: str, path: str, json: Any = None, ok: int = 200) -> Plan[Reply]:
    """A change of a route or its backends: ``request``, also taking the 202 a cluster answers
    when the node serving the route did not apply the change in time (its body is what
    ``ok`` would have had, with "status": "provisioning"). Read the reply as ``ok``'s, then
    pass what the call returns through ``applied``."""
    return (yield from request(method, path, json, ok=(ok, 202)))


def applied(reply: Reply, result: T) -> T:
    """``result`` if the change ``reply`` answered is applied where its route is served;
    otherwise (a 202) NotYetApplied, carrying ``result``."""
    if reply.status == 202:
        raise not_yet_applied(reply.response, reply.json(), result)
    return result


def pause(seconds: float) -> Plan[None]:
    yield Pause(seconds)
