"""The store under test, once per implementation.

Every test here runs against each URL of ``STORE_URLS``. A new implementation joins by
adding an entry: a function from the test's tmp_path to a URL of a fresh, empty store
(for Redis, e.g. a fresh key prefix or database number on a server the run provides).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from restcp.store import Store, open_store

STORE_URLS: dict[str, Callable[[Path], str]] = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp}/x.db",
}
# The stores whose data outlives the Store object that wrote it.
DURABLE = ["sqlite"]


class SyncStore:
    """A Store whose methods run to completion when called, so tests read top to bottom.

    Everything runs on the one loop of the test: a client bound to the loop it was created
    on (redis.asyncio's is) must be opened, used and closed there, which ``asyncio.run``
    per call would break.
    """

    def __init__(self, url: str, runner: asyncio.Runner) -> None:
        self.url = url
        self.runner = runner
        self.aio: Store = self.run(_open(url))
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.run(self.aio.close())

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.runner.run(_awaited(awaitable))

    def gather(self, *awaitables: Awaitable[Any]) -> list[Any]:
        return self.run(_gather(*awaitables))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.aio, name)
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))


async def _open(url: str) -> Store:
    return open_store(url)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _gather(*awaitables: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*awaitables))


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def open_url(runner: asyncio.Runner) -> Iterator[Callable[[str], SyncStore]]:
    """Opens stores that are closed (once) when the test ends, whatever it did."""
    opened: list[SyncStore] = []

    def open_(url: str) -> SyncStore:
        store = SyncStore(url, runner)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture(params=list(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORE_URLS[request.param](tmp_path)


@pytest.fixture(params=DURABLE)
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORE_URLS[request.param](tmp_path)


@pytest.fixture
def store(store_url: str, open_url: Callable[[str], SyncStore]) -> SyncStore:
    return open_url(store_url)
