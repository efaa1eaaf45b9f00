"""The connection to Redis that both halves of the store share (store.py's RedisStore and
coordination.py's RedisCoordination): one client and its pool, the key names, the epoch the
node follows, the scripts, and what a failed command means to a caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from restcp.errors import EpochMismatch, Unavailable
from restcp.store.redis.keys import Keys
from restcp.store.redis.scripts import EPOCH_ERROR, Script
from restcp.store.redis.url import RedisTarget

# A store that cannot reach Redis should say so (503) within an API request's patience.
DEFAULT_TIMEOUTS: Final = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
# A pooled connection idle for longer is PINGed before it carries a command (see
# _revalidate): after Redis restarts or fails over, every idle connection is dead.
HEALTH_CHECK_INTERVAL: Final = 1.0


async def _revalidate(conn: AbstractConnection) -> None:
    """Before a command goes out on a connection that idled past its health-check interval:
    PING it, and if that fails (Redis restarted or failed over and closed it), connect again.
    Only the PING is lost, and it changes nothing: no command is ever sent twice (the store
    does not retry, see connect). Without this, each connection the pool kept from before a
    Redis restart failed one API request with a 503."""
    interval = conn.health_check_interval
    if not interval or asyncio.get_running_loop().time() <= conn.next_health_check:
        return
    try:
        await conn._send_ping()  # type: ignore[no-untyped-call]
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        await conn.disconnect()
        await conn.connect()  # type: ignore[no-untyped-call]  # Redis down: raises


class _Revalidating:
    """Mixed into each connection class the store uses (before the class itself)."""

    async def check_health(self) -> None:
        await _revalidate(cast(AbstractConnection, self))

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        # Never during the handshake: its commands are pipelined, and a PING between them
        # would read the reply of another.
        await super().on_connect_check_health(check_health=False)  # type: ignore[misc]


class _Connection(_Revalidating, Connection):
    pass


class _SSLConnection(_Revalidating, SSLConnection):
    pass


class _SentinelConnection(_Revalidating, SentinelManagedConnection):
    pass


_REVALIDATING: Final[dict[type[AbstractConnection], type[AbstractConnection]]] = {
    Connection: _Connection,
    SSLConnection: _SSLConnection,
    SentinelManagedConnection: _SentinelConnection,
}


def _revalidating(client: Redis) -> Redis:
    """``client`` with connections that _revalidate. The pool has made none yet (opening a
    store connects nothing), so its class can still be swapped."""
    pool = client.connection_pool
    pool.connection_class = _REVALIDATING[pool.connection_class]
    return client


def connect(target: RedisTarget) -> RedisConnection:
    """Opens no connection: the first command connects, so this never blocks or fails on
    I/O."""
    options: dict[str, Any] = {
        **DEFAULT_TIMEOUTS,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        **dict(target.options),
    }
    common: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "decode_responses": True,
        # No retries: a script whose reply was lost may have run, and running create_route or
        # add_backend again would store it twice. The caller sees Unavailable and decides.
        "retry": Retry(NoBackoff(), 0),
        **options,
    }
    if target.service is None:
        ((host, port),) = target.hosts
        client = _revalidating(Redis(host=host, port=port, ssl=target.tls, **common))
        return RedisConnection(client, target)
    # The sentinels get the timeouts only: their credentials, if any, are not the master's.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    # Sentinel's constructor has no annotations; its instance is typed.
    sentinel: Sentinel = cast(Any, Sentinel)(list(target.hosts), sentinel_kwargs=sentinel_options)
    client = _revalidating(cast(Redis, sentinel.master_for(target.service, **common)))
    return RedisConnection(client, target, sentinel)


class RedisConnection:
    """One Redis client (a pool of connections, or a Sentinel's master), shared by the
    store's two halves, with what they must agree on: the key names, the epoch the node
    follows (which guards every script of the desired state), and the scripts, each
    registered once. Redis errors become Unavailable or EpochMismatch here, and nowhere
    else."""

    def __init__(self, client: Redis, target: RedisTarget, sentinel: Sentinel | None = None):
        self.client = client
        self.target = target
        self.keys = Keys(target.prefix)
        self._sentinel = sentinel
        self._closed = False
        # The epoch guarded scripts expect (None: any, until the node has decided which
        # cluster it belongs to); set through RedisCoordination.expect_epoch.
        self.epoch: str | None = None
        self._scripts: dict[Script, AsyncScript] = {}
        # How long a new subscription may take to be confirmed: a reply's patience.
        self.wait = float(dict(target.options).get("socket_timeout", 10.0))

    def describe(self) -> str:
        return self.target.describe()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.client.aclose()
        finally:
            if self._sentinel is not None:
                await self._sentinel.aclose()

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """Around every command: a Redis that cannot answer is Unavailable (503), one that
        does not hold the expected epoch an EpochMismatch."""
        # ReadOnlyError: a replica answered, as happens for a moment during a failover.
        try:
            yield
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,
        ) as err:
            raise Unavailable(f"store {self.describe()} is unavailable: {err}") from err
        except redis.exceptions.ResponseError as err:
            text = str(err)
            if not text.startswith(EPOCH_ERROR) or self.epoch is None:
                raise
            found = text.removeprefix(EPOCH_ERROR).strip() or None
            raise EpochMismatch(self.epoch, found) from None

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run ``script``: EVALSHA, and SCRIPT LOAD on NOSCRIPT (redis-py's AsyncScript)."""
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self.client.register_script(script.source)
        if script.guarded:
            args = [*args, self.keys.epoch, self.epoch or ""]
        with self.reachable():
            return await registered(keys=keys, args=args)
