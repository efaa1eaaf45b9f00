"""One client scenario, run by both clients: each is written once as a coroutine that says
``await c(client.healthz())`` and ``async with c.hold(backend.drained())``, and ``Flavour``
awaits what an AsyncClient returns and passes on what a Client returned already.

    @FLAVOURS
    def test_x(flavour: Flavour, node: Node) -> None:
        c = flavour

        async def scenario() -> None:
            async with c.open(node.api) as client:
                assert (await c(client.healthz())).status == "ok"

        run(scenario)

Both read answers with unknown fields forbidden: a field the server sends that the API's
models lack fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from restcp.client import AsyncClient, Client


class Flavour:
    """How a scenario drives one of the two clients."""

    name = ""

    def open(
        self, url: str, token: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def __call__(self, result: Any) -> Any:
        raise NotImplementedError

    def hold(self, manager: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError


class Sync(Flavour):
    name = "Client"

    @contextlib.asynccontextmanager
    async def open(self, url: str, token: str | None = None) -> AsyncIterator[Client]:
        with Client(url, token, unknown_fields="forbid") as client:
            yield client

    async def __call__(self, result: Any) -> Any:
        # A Client's methods have answered by now: nothing is left to await.
        assert not asyncio.iscoroutine(result), result
        return result

    @contextlib.asynccontextmanager
    async def hold(self, manager: Any) -> AsyncIterator[Any]:
        assert isinstance(manager, contextlib.AbstractContextManager), manager
        with manager as value:
            yield value


class Async(Flavour):
    name = "AsyncClient"

    @contextlib.asynccontextmanager
    async def open(self, url: str, token: str | None = None) -> AsyncIterator[AsyncClient]:
        async with AsyncClient(url, token, unknown_fields="forbid") as client:
            yield client

    async def __call__(self, result: Any) -> Any:
        assert asyncio.iscoroutine(result), result
        return await result

    def hold(self, manager: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        assert isinstance(manager, contextlib.AbstractAsyncContextManager), manager
        return manager


FLAVOURS = pytest.mark.parametrize("flavour", [Sync(), Async()], ids=lambda f: f.name)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())
