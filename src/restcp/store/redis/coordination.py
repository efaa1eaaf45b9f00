"""What the nodes sharing a Redis store need to work together: the Coordination protocol
that restcp.cluster declares (cluster/coordination.py) — pub/sub, leases, route ids
reserved for another node, the node registry, the epoch, the reseed and backend health.

None of it is the desired state except what ``restore_route`` and ``create_reserved_route``
write, which the same scripts' checks keep as consistent as the Store's writes. Channel names
are given and returned without the prefix, which they carry in Redis like every key."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis.exceptions

from restcp.errors import Conflict, EpochMismatch, Unavailable
from restcp.model import Route, RouteSettings
from restcp.store.codec import dump_backend_settings, dump_route_settings, dump_toxic
from restcp.store.redis import scripts
from restcp.store.redis.connection import RedisConnection
from restcp.store.redis.keys import address_taken, app_segment, describe_member
from restcp.store.redis.pubsub import Subscription

_ADDRESS_USED = "its address is used by route "
# About how many entries each changes and applied stream keeps (XADD MAXLEN ~): far more
# than a node falls behind by while it lives; one away longer resyncs anyway.
STREAM_LENGTH = 10_000


class RedisCoordination:
    """The coordination half of the Redis store, on the store's connection."""

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._keys = connection.keys
        self._run = connection.run
        self._client = connection.client

    async def drop_idle_connections(self) -> None:
        # A connection idle for under HEALTH_CHECK_INTERVAL is not PINGed before use
        # (connection.py): one Redis closed by restarting would fail a write with a 503.
        # Closing a dead connection may fail as it died: nothing is left to release then.
        with contextlib.suppress(
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError
        ):
            await self._client.connection_pool.disconnect(inuse_connections=False)

    # -- pub/sub ---------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> int:
        """Send ``message``; the number of subscriptions that received it (0: nobody
        listens, and the message is gone)."""
        with self._connection.reachable():
            receivers = await cast(Any, self._client.publish(self._keys.channel(channel), message))
        return int(receivers)

    async def subscribers(self, channel: str) -> int:
        with self._connection.reachable():
            counts = await cast(Any, self._client.pubsub_numsub(self._keys.channel(channel)))
        return sum(int(n) for _, n in counts)

    async def channels(self, pattern: str) -> list[str]:
        """The channels matching the glob ``pattern`` that someone is subscribed to."""
        prefix = self._keys.prefix
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
        with self._connection.reachable():
            names = await cast(Any, self._client.pubsub_channels(escaped + pattern))
        return sorted(str(name).removeprefix(prefix) for name in names)

    def subscription(self) -> Subscription:
        """A new pub/sub connection, subscribed to nothing yet."""
        return Subscription(self._connection)

    async def request(
        self, channel: str, message: str, reply_channel: str, within: float
    ) -> tuple[int, str | None]:
        """Publish ``message`` and wait up to ``within`` seconds for one message on
        ``reply_channel``, subscribed before publishing so that no reply can come too early.
        (receivers, reply or None); after a delivered request a lost connection is a
        missing reply, not an error: the request may be acted on all the same."""
        subscription = self.subscription()
        try:
            await subscription.subscribe([reply_channel])
            receivers = await self.publish(channel, message)
            if receivers == 0:
                return 0, None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            try:
                while (left := deadline - loop.time()) > 0:
                    got = await subscription.get(left)
                    if got is not None and got[0] == reply_channel:
                        return receivers, got[1]
            except Unavailable:
                pass
            return receivers, None
        finally:
            await subscription.close()

    # -- streams: change notices and their acknowledgements ---------------------------------

    async def announce(self, ip: str, notice: str, channel: str) -> tuple[str, int]:
        """Add ``notice`` to the changes stream of ``ip`` and publish it on ``channel``, at
        once; (the id after which to read ``ip``'s acknowledgements, channel subscribers)."""
        k = self._keys
        since, receivers = await self._run(
            scripts.ANNOUNCE,
            [k.changes(ip), k.applied(ip), k.channel(channel)],
            [notice, STREAM_LENGTH],
        )
        return str(since), int(receivers)

    async def acknowledge(self, ip: str, acks: Sequence[str]) -> None:
        """Add acknowledgements to the applied stream of ``ip``, in order."""
        if not acks:
            return
        with self._connection.reachable():
            async with self._client.pipeline(transaction=False) as pipe:
                for ack in acks:
                    pipe.xadd(self._keys.applied(ip), {"m": ack}, maxlen=STREAM_LENGTH)
                await pipe.execute()

    async def stream_start(self, seconds_ago: float) -> str:
        """The stream id of Redis's clock ``seconds_ago`` seconds ago: reading from it
        returns what was added since then."""
        with self._connection.reachable():
            seconds, micros = await cast(Any, self._client.time())
        return f"{max(0, int(seconds) * 1000 + int(micros) // 1000 - round(seconds_ago * 1000))}-0"

    async def read_changes(
        self, positions: dict[str, str], within: float
    ) -> list[tuple[str, str, str]]:
        """The notices after ``positions`` (ip -> stream id) as (ip, id, notice), waiting up
        to ``within`` seconds for the first."""
        return await self._read(self._keys.changes, positions, within)

    async def read_applied(self, ip: str, since: str, within: float) -> list[tuple[str, str]]:
        """The acknowledgements of ``ip`` after ``since`` as (id, ack), waiting up to
        ``within`` seconds for the first."""
        found = await self._read(self._keys.applied, {ip: since}, within)
        return [(entry_id, text) for _, entry_id, text in found]

    async def _read(
        self, name: Callable[[str], str], positions: dict[str, str], within: float
    ) -> list[tuple[str, str, str]]:
        streams = {name(ip): ip for ip in positions}
        block = max(1, round(within * 1000))
        with self._connection.reachable():
            replies = await cast(
                Any,
                self._client.xread({name(ip): at for ip, at in positions.items()}, block=block),
            )
        return [
            (streams[stream], entry_id, fields.get("m", ""))
            for stream, entries in replies or []
            for entry_id, fields in entries
        ]

    # -- leases and the node registry ------------------------------------------------------

    async def acquire_lease(
        self, ip: str, holder: str, ttl: float, replace: str | None = None
    ) -> tuple[int, str, float]:
        """Renew ``holder``'s lease of ``ip``, or take it if it is free or held by exactly
        ``replace``, for ``ttl`` seconds. (2 acquired, 1 renewed, 0 held by another; the
        holder; seconds left of another's)."""
        state, current, left_ms = await self._run(
            scripts.ACQUIRE_LEASE,
            [self._keys.lease(ip)],
            [holder, max(1, round(ttl * 1000)), replace or ""],
        )
        return int(state), str(current), max(0, int(left_ms)) / 1000

    async def release_lease(self, ip: str, holder: str) -> bool:
        return bool(await self._run(scripts.RELEASE_LEASE, [self._keys.lease(ip)], [holder]))

    async def lease_holders(self, ips: Sequence[str]) -> dict[str, tuple[str, float]]:
        """ip -> (holder, seconds left) of the leases that exist."""
        if not ips:
            return {}
        with self._connection.reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                for ip in ips:
                    pipe.get(self._keys.lease(ip))
                    pipe.pttl(self._keys.lease(ip))
                replies = await pipe.execute()
        return {
            ip: (str(holder), max(0, int(left)) / 1000)
            for ip, holder, left in zip(ips, replies[0::2], replies[1::2], strict=True)
            if holder is not None
        }

    async def stored_ports(self, ip: str) -> list[int]:
        """The ports of the routes stored for ``ip``, whatever epoch Redis holds: the ports
        a node that served ``ip`` may have bound."""
        with self._connection.reachable():
            ports = await cast(Any, self._client.hkeys(self._keys.ip_ports(ip)))
        return sorted(int(port) for port in ports)

    async def put_node(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a node for ``GET /nodes``; it vanishes ``ttl`` seconds after
        its last refresh."""
        await self._run(
            scripts.PUT_NODE,
            [self._keys.nodes, self._keys.node(node_id)],
            [node_id, json.dumps(record), max(1, round(ttl * 1000))],
        )

    async def drop_node(self, node_id: str) -> None:
        with self._connection.reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.node(node_id))
                pipe.delete(self._keys.node_stats(node_id))
                pipe.srem(self._keys.nodes, node_id)
                await pipe.execute()

    async def list_nodes(self) -> list[dict[str, Any]]:
        records = await self._run(scripts.LIST_NODES, [self._keys.nodes], [self._keys.prefix])
        return [json.loads(record) for record in records]

    async def put_stats(self, node_id: str, text: str, ttl: float) -> None:
        """Publish the node's counters (JSON) for the other nodes; gone ``ttl`` seconds
        after the last."""
        with self._connection.reachable():
            await self._client.set(
                self._keys.node_stats(node_id), text, px=max(1, round(ttl * 1000))
            )

    async def list_stats(self) -> dict[str, str]:
        """node id -> the counters it published last, of every registered node that did."""
        with self._connection.reachable():
            ids = sorted(str(i) for i in await cast(Any, self._client.smembers(self._keys.nodes)))
            if not ids:
                return {}
            texts = await self._client.mget([self._keys.node_stats(i) for i in ids])
        return {i: str(t) for i, t in zip(ids, texts, strict=True) if t is not None}

    async def routes_per_ip(self, ips: Sequence[str]) -> dict[str, int]:
        if not ips:
            return {}
        with self._connection.reachable():
            async with self._client.pipeline(transaction=False) as pipe:
                for ip in ips:
                    pipe.scard(self._keys.ip_routes(ip))
                counts = await pipe.execute()
        return {ip: int(n) for ip, n in zip(ips, counts, strict=True)}

    # -- routes provisioned for another node -------------------------------------------------

    async def reserve_route_id(self, app: str) -> int:
        """Give out the app's next route id for a route another node will store
        (``create_reserved_route``); an id whose route is never stored stays unused."""
        return int(await self._run(scripts.RESERVE_ROUTE_ID, [self._keys.route_counter(app)], []))

    async def create_reserved_route(
        self,
        app: str,
        route_id: int,
        frontend_ip: str,
        port: int,
        settings: RouteSettings,
        holder: str,
    ) -> Route:
        """``create_route`` under a reserved id, if ``holder`` holds the lease of the IP."""
        k = self._keys
        status, value = await self._run(
            scripts.CREATE_RESERVED_ROUTE,
            [*k.route_indexes(app, frontend_ip), k.route(app, route_id), k.lease(frontend_ip)],
            [
                k.prefix,
                app_segment(app),
                frontend_ip,
                port,
                dump_route_settings(settings),
                route_id,
                holder,
            ],
        )
        if status == 0:
            raise address_taken(frontend_ip, port, str(value))
        if status == -1:
            raise Unavailable(
                f"this node no longer holds the lease of {frontend_ip} "
                f"(held by {value or 'nobody'})"
            )
        if status == -2:
            raise Conflict(f"route {route_id} of app {app!r} was not reserved or exists already")
        return Route(app, route_id, frontend_ip, port, settings, version=1)

    # -- the epoch, reseed and health (docs/cluster.md) ---------------------------------------

    def expect_epoch(self, epoch: str | None) -> None:
        """From now on every read and write of the desired state runs only while Redis holds
        ``epoch``, and raises EpochMismatch otherwise (None: no check)."""
        self._connection.epoch = epoch

    async def get_epoch(self) -> str | None:
        with self._connection.reachable():
            epoch = await cast(Any, self._client.get(self._keys.epoch))
        return None if epoch is None else str(epoch)

    async def claim_epoch(self, candidate: str) -> str:
        """Store ``candidate`` as the epoch if Redis has none (SETNX); the epoch stored."""
        return str(await self._run(scripts.CLAIM_EPOCH, [self._keys.epoch], [candidate]))

    async def restore_route(
        self, route: Route, epoch: str, route_counter: int = 0, backend_counter: int = 0
    ) -> tuple[str, str]:
        """Write ``route`` with its ids, port, backends and toxics if Redis holds ``epoch``
        and no other content under its id or address; raise the counters to at least the
        ids (and the given counters). ("written" | "unchanged" | "conflict", why)."""
        k = self._keys
        app, route_id = route.app, route.id
        args: list[str | int] = [
            k.prefix,
            app_segment(app),
            route_id,
            route.frontend_ip,
            route.port,
            dump_route_settings(route.settings),
            max(route_counter, route_id),
            max([backend_counter, *(b.id for b in route.backends)]),
            epoch,
            len(route.backends),
        ]
        for backend in route.backends:
            args += [backend.id, backend.ip, backend.port, dump_backend_settings(backend)]
        for toxic in route.toxics:
            args += [toxic.name, dump_toxic(toxic)]
        status, detail = await self._run(
            scripts.RESTORE_ROUTE,
            [
                *k.route_indexes(app, route.frontend_ip),
                k.route(app, route_id),
                k.backend_counter(app, route_id),
                k.backends(app, route_id),
                k.epoch,
            ],
            args,
        )
        status = int(status)
        if status == -1:
            raise EpochMismatch(epoch, str(detail) or None)
        if status == 0:
            why = str(detail)
            if why.startswith(_ADDRESS_USED):
                why = "its address is used by " + describe_member(why.removeprefix(_ADDRESS_USED))
            return "conflict", why
        return ("written" if status == 1 else "unchanged"), ""

    async def put_backend_health(
        self, app: str, route_id: int, live: Sequence[int], dead: Sequence[int]
    ) -> bool:
        """Replace the route's ``backends_live`` and ``backends_dead`` lists; False if the
        route is not stored (nothing written)."""
        k = self._keys
        written = await self._run(
            scripts.PUT_HEALTH,
            [
                k.route(app, route_id),
                k.backends(app, route_id),
                k.backends_live(app, route_id),
                k.backends_dead(app, route_id),
            ],
            [len(live), len(dead), *live, *dead],
        )
        return bool(written)

    async def backend_health(self, app: str, route_id: int) -> dict[int, str]:
        """backend id -> "up" or "down", as the route's serving node last wrote them."""
        k = self._keys
        with self._connection.reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.lrange(k.backends_live(app, route_id), 0, -1)
                pipe.lrange(k.backends_dead(app, route_id), 0, -1)
                live, dead = await pipe.execute()
        health = {int(b): "down" for b in dead}
        health.update({int(b): "up" for b in live})
        return health
