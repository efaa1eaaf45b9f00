"""What the cluster needs from a shared store (store/redis/coordination.py offers it): the
cluster declares it, the store implements it, and only the store talks to Redis."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol, runtime_checkable

from restcp.model import Route, RouteSettings


class Subscription(Protocol):
    """One pub/sub connection; a lost one raises Unavailable and is not reused."""

    channels: frozenset[str]
    last_heard: float

    async def subscribe(self, channels: Collection[str]) -> None: ...

    async def get(self, within: float) -> tuple[str, str] | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class Coordination(Protocol):
    """What nodes sharing a store need to work together: pub/sub, the streams of change
    notices and acknowledgements, leases, route ids reserved for another node, the node
    registry, the epoch and backend health."""

    async def publish(self, channel: str, message: str) -> int: ...

    async def drop_idle_connections(self) -> None:
        """Close the connections kept for later use: after the store was lost they are
        dead, and each would fail the next command it carried."""
        ...

    async def subscribers(self, channel: str) -> int: ...

    async def channels(self, pattern: str) -> list[str]: ...

    def subscription(self) -> Subscription: ...

    async def request(
        self, channel: str, message: str, reply_channel: str, within: float
    ) -> tuple[int, str | None]: ...

    async def announce(self, ip: str, notice: str, channel: str) -> tuple[str, int]: ...

    async def acknowledge(self, ip: str, acks: Sequence[str]) -> None: ...

    async def stream_start(self, seconds_ago: float) -> str: ...

    async def read_changes(
        self, positions: dict[str, str], within: float
    ) -> list[tuple[str, str, str]]: ...

    async def read_applied(self, ip: str, since: str, within: float) -> list[tuple[str, str]]: ...

    async def acquire_lease(
        self, ip: str, holder: str, ttl: float, replace: str | None = None
    ) -> tuple[int, str, float]: ...

    async def stored_ports(self, ip: str) -> list[int]: ...

    async def release_lease(self, ip: str, holder: str) -> bool: ...

    async def lease_holders(self, ips: Sequence[str]) -> dict[str, tuple[str, float]]: ...

    async def put_node(self, node_id: str, record: dict[str, Any], ttl: float) -> None: ...

    async def drop_node(self, node_id: str) -> None: ...

    async def list_nodes(self) -> list[dict[str, Any]]: ...

    async def put_stats(self, node_id: str, text: str, ttl: float) -> None: ...

    async def list_stats(self) -> dict[str, str]: ...

    async def routes_per_ip(self, ips: Sequence[str]) -> dict[str, int]: ...

    async def reserve_route_id(self, app: str) -> int: ...

    async def create_reserved_route(
        self,
        app: str,
        route_id: int,
        frontend_ip: str,
        port: int,
        settings: RouteSettings,
        holder: str,
    ) -> Route: ...

    def expect_epoch(self, epoch: str | None) -> None: ...

    async def get_epoch(self) -> str | None: ...

    async def claim_epoch(self, candidate: str) -> str: ...

    async def restore_route(
        self, route: Route, epoch: str, route_counter: int = 0, backend_counter: int = 0
    ) -> tuple[str, str]: ...

    async def put_backend_health(
        self, app: str, route_id: int, live: Sequence[int], dead: Sequence[int]
    ) -> bool: ...

    async def backend_health(self, app: str, route_id: int) -> dict[int, str]: ...


@runtime_checkable
class SharedStore(Protocol):
    """A store several nodes share (store/redis's RedisStore): its routes, and the
    coordination it offers them. An embedded store is not one, and its node no cluster."""

    @property
    def coordination(self) -> Coordination: ...

    async def get_route(self, app: str, route_id: int) -> Route: ...
