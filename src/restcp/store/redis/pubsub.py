"""A pub/sub connection of its own, for the cluster's listener and for each provisioning
request (coordination.py opens them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis.exceptions

from restcp.errors import Unavailable
from restcp.store.redis.connection import RedisConnection


class Subscription:
    """One pub/sub connection of its own. A lost connection raises Unavailable and leaves
    the subscription unusable on purpose: redis-py would reconnect and resubscribe quietly,
    but whatever was published meanwhile is gone, and only the caller knows to resync after
    opening a new one. Channel names are given and returned without the prefix."""

    def __init__(self, connection: RedisConnection) -> None:
        self._pubsub = connection.client.pubsub()
        self._prefix = connection.keys.prefix
        self._describe = connection.describe()
        self._wait = connection.wait
        # Messages read while waiting for a subscription to be confirmed.
        self._early: deque[tuple[str, str]] = deque()
        self.channels: frozenset[str] = frozenset()
        # When the connection last delivered anything (a message, a confirmation, a pong).
        self.last_heard = time.monotonic()

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as err:
            raise Unavailable(f"pub/sub of {self._describe} is unavailable: {err}") from err

    async def subscribe(self, channels: Collection[str]) -> None:
        """Subscribe and wait until Redis confirms every channel: from then on, a PUBLISH
        to one of them reaches this subscription."""
        waiting = {self._prefix + c for c in channels}
        if not waiting:
            return
        with self._reachable():
            await self._pubsub.subscribe(*waiting)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while waiting:
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(f"{self._describe} did not confirm a subscription in time")
            message = await self._read(left)
            if message is None:
                continue
            if message["type"] == "subscribe":
                waiting.discard(message["channel"])
            elif message["type"] == "message":
                self._early.append(self._unprefixed(message))
        self.channels = self.channels | frozenset(channels)

    async def get(self, within: float) -> tuple[str, str] | None:
        """The next message as (channel, data), or None if none came within ``within`` seconds
        (or only a confirmation or a pong did)."""
        if self._early:
            return self._early.popleft()
        message = await self._read(within)
        if message is None or message["type"] != "message":
            return None
        return self._unprefixed(message)

    async def ping(self) -> None:
        """Ask for a pong, which ``get`` reads: a silent connection may be a dead one."""
        with self._reachable():
            await self._pubsub.ping()

    async def close(self) -> None:
        # Bounded: closing a pub/sub connection that Redis cut mid-read must not hold up the
        # node's stop (the connection is dropped either way).
        with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._wait):
                await cast(Any, self._pubsub).aclose()

    async def _read(self, within: float) -> dict[str, Any] | None:
        with self._reachable():
            message = await self._pubsub.get_message(timeout=max(0.0, within))
        if message is not None:
            self.last_heard = time.monotonic()
        return cast(dict[str, Any] | None, message)

    def _unprefixed(self, message: dict[str, Any]) -> tuple[str, str]:
        return str(message["channel"]).removeprefix(self._prefix), str(message["data"])
