"""What the cluster needs from its node (the route service, control/routes.py, implements it)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from restcp.model import BackendStatus, Route, RouteKey, RouteSettings


class Controller(Protocol):
    """The node: applies routes from the store."""

    api_address: tuple[str, int] | None

    def protects(self) -> bool:
        """Whether the node has routes a wrong epoch could take away (serving or known)."""

    def served(self) -> Collection[RouteKey]: ...

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]: ...

    async def epoch_changed(self, epoch: str) -> None:
        """The node follows ``epoch`` from now on: remember it (the snapshot)."""

    async def sync(self, key: RouteKey, *, publish: bool = True) -> None: ...

    async def resync(self) -> None: ...

    async def create_route(
        self,
        app: str,
        frontend_ip: str | None,
        port: int | None,
        settings: RouteSettings,
        route_id: int | None = None,
    ) -> Route: ...
