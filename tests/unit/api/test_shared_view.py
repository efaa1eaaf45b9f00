"""Event streams of one scope share one view of the routes a second (api/app.py): ten open
dashboards cost the node one reading of the store, not ten."""

from __future__ import annotations

import asyncio
from typing import Any

from restcp.api.app import Api
from restcp.api.auth import ApiConfig


class Store:
    def __init__(self) -> None:
        self.reads: list[str | None] = []

    async def all_routes(self) -> list[Any]:
        self.reads.append(None)
        return []

    async def list_routes(self, app: str) -> list[Any]:
        self.reads.append(app)
        return []


class Owner:
    started_at = 0.0
    node_id = "local"

    def samples(self) -> list[Any]:
        return []

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    async def nodes(self) -> list[dict[str, Any]]:
        return []


def test_streams_of_one_scope_share_a_view() -> None:
    async def main() -> list[str | None]:
        store = Store()
        api = Api(store, Owner(), ApiConfig())  # type: ignore[arg-type]
        views = [await api._view(None) for _ in range(10)]
        assert all(v is views[0] for v in views)
        await api._view("a")
        await api._view("a")
        return store.reads

    assert asyncio.run(main()) == [None, "a"]
