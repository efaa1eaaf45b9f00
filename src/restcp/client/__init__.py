"""restcp's Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

    from restcp import Client

    with Client("http://127.0.0.1:8001", token=None) as client:   # or RESTCP_URL, RESTCP_TOKEN
        route = client.routes("web").create(balance="round_robin")
        route.backends.add("10.0.0.5", 8080)
        with route.backends[1].drained():
            ...
        with route.toxic("latency", latency=200):
            ...

Both return the API's own pydantic models (api/schemas.py) and raise one exception per kind
of problem (errors.py). docs/client.md is the guide. Nothing here imports the server or its
web framework: the client needs httpx, pydantic and prometheus_client only.
"""

from __future__ import annotations

import os
from types import TracebackType

import httpx

from restcp.api.schemas import (
    AdoptOut,
    AppOut,
    BackendOut,
    CertificateOut,
    FieldError,
    HealthOut,
    NodeOut,
    ReseedOut,
    RouteOut,
    TokenCreated,
    TokenOut,
    ToxicOut,
)
from restcp.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    NotYetApplied,
    Provisioning,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from restcp.client.metrics import Metrics
from restcp.client.plan import UnknownFields
from restcp.client.resources import Api, Backend, Backends, Certificates, Route, Routes, Tokens
from restcp.client.toxics import Toxic, Toxics
from restcp.client.transport import AsyncTransport, SyncTransport

__all__ = [
    "AdoptOut",
    "ApiError",
    "AppOut",
    "AsyncClient",
    "Backend",
    "BackendOut",
    "Backends",
    "CertificateOut",
    "Certificates",
    "Client",
    "Conflict",
    "FieldError",
    "Forbidden",
    "HealthOut",
    "Invalid",
    "Metrics",
    "NodeOut",
    "NotFound",
    "NotYetApplied",
    "Provisioning",
    "ReseedOut",
    "Route",
    "RouteOut",
    "Routes",
    "TokenCreated",
    "TokenOut",
    "Tokens",
    "Toxic",
    "ToxicOut",
    "Toxics",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
]

DEFAULT_URL = "http://127.0.0.1:8001"
# Long enough for the slowest answer the API gives on purpose: a cluster reseed, or a
# route handed to another node (--provision-timeout).
DEFAULT_TIMEOUT = 60.0


def _config(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers: the arguments, else RESTCP_URL and RESTCP_TOKEN."""
    url = url or os.environ.get("RESTCP_URL") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url  # HOST:PORT, as `restcp serve --api` takes it
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise ValueError(f"invalid API URL {url!r}: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid API URL {url!r}: use http://HOST:PORT or https://...")
    token = token or os.environ.get("RESTCP_TOKEN") or None
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return url.rstrip("/"), headers


class Client(Api[SyncTransport]):
    """A blocking client of one node's API. ``url`` (``http://HOST:PORT``, or ``HOST:PORT``)
    and ``token`` default to RESTCP_URL (else http://127.0.0.1:8001) and RESTCP_TOKEN (else
    none). Close it, or use it as a context manager."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        unknown_fields: UnknownFields = "ignore",
    ) -> None:
        base, headers = _config(url, token)
        http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
        super().__init__(SyncTransport(http, unknown_fields))
        self.url = base

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(Api[AsyncTransport]):
    """As ``Client``, on asyncio: every method is awaited, every ``with`` is ``async with``.
    Close it with ``aclose()``, or use it as an async context manager."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        unknown_fields: UnknownFields = "ignore",
    ) -> None:
        base, headers = _config(url, token)
        http = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout)
        super().__init__(AsyncTransport(http, unknown_fields))
        self.url = base

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
