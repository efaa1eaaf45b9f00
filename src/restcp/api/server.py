"""The API's HTTP server: aiohttp's, answering what it cannot parse as the API answers.

aiohttp refuses a request it cannot parse (a line over 8190 bytes, a request line that is not
HTTP, a bad ``Content-Length``, a broken chunk) in its protocol object, before any middleware
runs: with a ``text/plain`` 400 that quotes the request back, and an ERROR with a traceback
in the ``aiohttp.server`` log. Those are the client's mistakes, so ``_Protocol`` answers them
as every other error of the API is answered, with a problem document that quotes nothing of
the request, and logs one INFO line. Everything else (a handler's exception that escaped the
middleware: a bug) is still logged at ERROR with its traceback.

aiohttp has no setting for the protocol class, so ``ApiRunner`` makes the server that makes
the connections. A client gets ``--api-request-timeout`` to send a request's head, counted
from its connection or from the previous answer on a kept-alive one (aiohttp's keep-alive
timer, which does not restart per byte, so a head trickled a byte at a time is cut off all
the same), and as long again for its body (``api.app.parse_body``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from restcp.api.app import SERVER, problem

log = logging.getLogger("restcp.api")

# (class, what it means), the first that matches; none of them quotes the request.
_PARSE_ERRORS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "the request line or a header field is longer than {limit} bytes"),
    (BadHttpMethod, "the request line is not HTTP: unknown method"),
    (BadStatusLine, "the request line is not METHOD TARGET HTTP/1.x"),
    (InvalidURLError, "the request target is not a valid URL path"),
    (InvalidHeader, "a header field is malformed"),
    (PayloadEncodingError, "the body does not match its Content-Length or Transfer-Encoding"),
)


def describe(exc: BaseException | None) -> str:
    """What is wrong with a request aiohttp could not parse, in words of our own: its messages
    quote the request (a URL, a header) back to the client."""
    for kind, text in _PARSE_ERRORS:
        if isinstance(exc, kind):
            limit = exc.args[1] if isinstance(exc, LineTooLong) and len(exc.args) > 1 else 8190
            return text.format(limit=limit)
    reason = ""
    if isinstance(exc, HttpProcessingError):
        # llhttp's reason, e.g. "Invalid character in Content-Length:", when it is plain words
        # (aiohttp's own messages may quote a header name or value; those are left out).
        first = exc.message.partition("\n")[0].rstrip(":. ")
        if first.isascii() and first.replace(" ", "").replace("-", "").isalnum():
            reason = f": {first[:100]}"
    return f"the request is not valid HTTP/1.1{reason}"


class _Protocol(RequestHandler):
    """One API connection: aiohttp's, with its answer to an unparsable request replaced."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # Not the client's doing: a handler raised past the problems middleware.
            log.error("bug: unhandled error on %s %s", request.method, request.path, exc_info=exc)
            detail = "internal error; this is a bug in restcp, please report it"
        else:
            detail = describe(exc)
            log.info("refused a request from %s: %s (%d)", request.remote, detail, status)
        if request.writer.output_size > 0:
            # An answer has begun: there is no taking it back, so the connection ends.
            raise ConnectionError("an answer was being sent already")
        response = problem(status, detail)
        response.headers["Server"] = SERVER
        response.force_close()
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # An HTTP error aiohttp raised before the middlewares could answer it (an expectation
        # it cannot meet on a path that does not exist): as a problem, quoting nothing.
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            answer = problem(resp.status, resp.reason)
            answer.headers["Server"] = SERVER
            resp = answer
        return await super().finish_response(request, resp, start_time)


class _Server(web.Server):
    """aiohttp's server of one runner, making ``_Protocol`` connections."""

    def __init__(self, made: web.Server) -> None:
        # Everything the application set up (its handler, request factory, settings) is in
        # the server aiohttp made for it; only the class of its connections changes.
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An ``AppRunner`` for the API: its answers to unparsable requests, and a deadline for
    each request's head of ``request_timeout`` seconds."""

    def __init__(self, app: web.Application, request_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, keepalive_timeout=request_timeout, **kwargs)

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server())
