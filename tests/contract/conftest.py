"""The store under test, once per implementation.

Every test here runs against each URL of ``STORE_URLS``. A new implementation joins by
adding an entry: a function from the test's request and tmp_path to a URL of a fresh, empty
store. Redis gets one real redis-server per session (tests/redis_server.py), flushed
before each test that uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from restcp.store import Store, open_store
from tests.redis_server import RedisServer

StoreUrl = Callable[[pytest.FixtureRequest, Path], str]
STORE_URLS: dict[str, StoreUrl] = {
    "memory": lambda request, tmp: "memory://",
    "sqlite": lambda request, tmp: f"sqlite:///{tmp}/x.db",
    "redis": lambda request, tmp: str(request.getfixturevalue("redis_url")),
}
# The stores whose data outlives the Store object that wrote it.
DURABLE = ["sqlite", "redis"]


class Synced:
    """An object whose coroutine methods run to completion when called, so tests read top
    to bottom; ``aio`` is the object itself.

    Everything runs on the one loop of the test: a client bound to the loop it was created
    on (redis.asyncio's is) must be opened, used and closed there, which ``asyncio.run``
    per call would break.
    """

    def __init__(self, aio: Any, runner: asyncio.Runner) -> None:
        self.aio = aio
        self.runner = runner

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.runner.run(_awaited(awaitable))

    def gather(self, *awaitables: Awaitable[Any]) -> list[Any]:
        return self.run(_gather(*awaitables))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.aio, name)
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))


class SyncStore(Synced):
    """A Store opened from its URL, run as Synced does."""

    def __init__(self, url: str, runner: asyncio.Runner) -> None:
        super().__init__(None, runner)
        self.url = url
        self.aio: Store = self.run(_open(url))
        self.closed = False

    @property
    def coordination(self) -> Synced:
        """A shared store's other half (store/redis), on the same loop."""
        return Synced(cast(Any, self.aio).coordination, self.runner)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.run(self.aio.close())


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
    return STORE_URLS[request.param](request, tmp_path)


@pytest.fixture(params=DURABLE)
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORE_URLS[request.param](request, tmp_path)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the session; a missing redis-server fails the tests that need it."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the server's database 0, to look at keys the way an operator would."""
    with redis.Redis(redis_server.host, redis_server.port, decode_responses=True) as client:
        yield client


@pytest.fixture
def redis_url(redis_server: RedisServer, raw_redis: redis.Redis) -> str:
    """An empty database 0 under the default prefix."""
    raw_redis.flushdb()
    return redis_server.url()


@pytest.fixture
def store(store_url: str, open_url: Callable[[str], SyncStore]) -> SyncStore:
    return open_url(store_url)
