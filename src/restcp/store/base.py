"""The Store protocol: the desired state every node follows, and the one shared truth.

Every implementation keeps these rules, and tests/contract runs one suite against each:
- ids count from 1 (routes per app, backends per route) and are never reused, even after a
  delete, so an app exists from its first route on and keeps its counters;
- every method is atomic: a failed call (NotFound, Conflict) changes nothing;
- two routes never share a frontend address: ``create_route`` raises Conflict;
- a shared store (Redis) raises a route's ``version`` by one in the same atomic step as
  every write that changes the route, its backends or its toxics: the node serving the route
  acknowledges the version it applied, and a write waits for that (cluster/changes.py), so
  a write of a route that left the version alone could be answered before it is applied.
  tests/contract/test_redis.py lists every method as such a write or not;
- a route's toxics are kept in the order they were added, each under a name of its own
  (``add_toxic`` raises DuplicateToxic, a Conflict); they go with the route when it is
  deleted;
- certificates (docs/tls.md) are kept by name, their chain and key as given; a name is
  created once (``create_certificate`` raises Conflict) and replaced or deleted only while
  it exists (NotFound). A store never judges one (the route service does) and never tells
  which routes use one;
- API tokens are kept as hashes only (the API hashes; a store never sees a token), with
  ids per app that count from 1 and are never reused; tokens do not make an app exist.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from restcp.model import Backend, Certificate, Route, RouteKey, RouteSettings, Toxic


@dataclass(frozen=True, slots=True)
class AppInfo:
    app: str
    routes: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An app's API token as stored: never the token itself, nor its hash."""

    app: str
    id: int
    # Unix seconds.
    created_at: float


class Store(Protocol):
    """The desired state: apps, their routes and each route's backends.

    Every write is atomic and checks what it must in the same transaction (a route's address
    free, a backend not a duplicate, an id counter raised only by a write that lands), so a
    refused write changes nothing. Only the route service writes routes and backends.
    """

    async def close(self) -> None:
        """Release the connection; the store is unusable afterwards."""

    async def list_apps(self) -> list[AppInfo]: ...

    async def list_routes(self, app: str) -> list[Route]:
        """The app's routes by id; NotFound if the app never had a route."""

    async def all_routes(self) -> list[Route]:
        """Every stored route of every app."""

    async def get_route(self, app: str, route_id: int) -> Route: ...

    async def create_route(
        self, app: str, frontend_ip: str, port: int, settings: RouteSettings
    ) -> Route:
        """Store a route at an address its owner has bound; assigns the next id of the app."""

    async def update_route(self, app: str, route_id: int, settings: RouteSettings) -> Route: ...

    async def delete_route(self, app: str, route_id: int) -> None: ...

    async def add_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        """Attach ``backend`` (its id is ignored) under the route's next backend id."""

    async def update_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        """Replace the backend of id ``backend.id``: address and settings."""

    async def delete_backend(self, app: str, route_id: int, backend_id: int) -> None: ...

    async def add_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        """Append ``toxic`` to the route's toxics; DuplicateToxic if it has one of that
        name."""

    async def update_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        """Replace the toxic named ``toxic.name``, in its place."""

    async def delete_toxic(self, app: str, route_id: int, name: str) -> None: ...

    async def touch_route(self, app: str, route_id: int) -> None:
        """Something the route is served with changed outside it (a certificate it uses):
        a shared store raises its version, so the node serving it applies it anew and says
        so; NotFound if there is no such route."""

    async def ports_in_use(self, frontend_ip: str) -> set[int]: ...

    async def get_port_cursor(self, frontend_ip: str) -> int | None:
        """Where the owner of ``frontend_ip`` resumes handing out ports; None at first."""

    async def set_port_cursor(self, frontend_ip: str, cursor: int) -> None: ...

    async def list_certificates(self) -> list[Certificate]:
        """Every certificate, by name."""

    async def get_certificate(self, name: str) -> Certificate: ...

    async def create_certificate(self, certificate: Certificate) -> None:
        """Store a new certificate; Conflict if one of its name is stored."""

    async def replace_certificate(self, certificate: Certificate) -> None:
        """Replace the certificate of its name; NotFound if there is none."""

    async def delete_certificate(self, name: str) -> None: ...

    async def create_token(self, app: str, token_hash: str, created_at: float) -> TokenInfo:
        """Store a token of ``app`` by its hash under the app's next token id; Conflict if
        the hash is already stored (and then nothing changes, the counter included)."""

    async def list_tokens(self, app: str) -> list[TokenInfo]:
        """The app's tokens by id; empty (not NotFound) for an app without any."""

    async def delete_token(self, app: str, token_id: int) -> None:
        """Revoke at once: ``find_token`` no longer finds it. NotFound if there is none."""

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        """The token stored under ``token_hash``, or None."""


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """What a node of a Redis cluster last served, kept in a local file: enough to serve it
    again with Redis down, and to write it back into a Redis that lost it (reseed)."""

    # The cluster epoch the routes were read under; None before the node saw one.
    epoch: str | None = None
    routes: tuple[Route, ...] = ()
    # The highest route id given out per app, and backend id per route, that the snapshot
    # has seen (never lower than the ids it holds; deleted ids count too).
    route_counters: dict[str, int] = field(default_factory=dict)
    backend_counters: dict[RouteKey, int] = field(default_factory=dict)


class Snapshot(Protocol):
    """A node's local copy of the routes it serves (store/sqlite.py keeps one in SQLite).
    Routes are written and removed one by one, so several nodes (of different frontend
    IPs) may share a file; each reads back the routes of its own frontend IPs."""

    async def load_snapshot(self, frontend_ips: Collection[str]) -> SnapshotData: ...

    async def save_snapshot(
        self, epoch: str | None, upserts: Iterable[Route], deletes: Iterable[RouteKey]
    ) -> None:
        """In one transaction: store ``epoch`` (None keeps the one stored), replace each
        route of ``upserts`` with its backends and toxics, and the certificates it is
        served with, remove ``deletes``. Counters only grow. ``load_snapshot`` gives each
        route back with the certificates its tls names."""

    async def close(self) -> None: ...
