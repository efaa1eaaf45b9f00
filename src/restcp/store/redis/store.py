"""The desired state in Redis: the Store protocol (store/base.py), one script per call that
reads routes or writes more than one key (scripts.py)."""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import unquote

from restcp.errors import Conflict, DuplicateBackend, DuplicateToxic, NotFound
from restcp.model import Backend, Certificate, Route, RouteSettings, Toxic
from restcp.store.base import AppInfo, TokenInfo
from restcp.store.codec import (
    dump_backend_settings,
    dump_route_settings,
    dump_toxic,
    load_backend,
    load_route_settings,
    load_toxic,
)
from restcp.store.redis import scripts
from restcp.store.redis.connection import RedisConnection
from restcp.store.redis.coordination import RedisCoordination
from restcp.store.redis.keys import address_taken, app_segment, describe_member
from restcp.store.redis.url import RedisTarget


class RedisStore:
    """The Store of a cluster. ``coordination`` is the other half, on the same connection:
    what the nodes sharing this store need to work together (restcp.cluster uses it)."""

    def __init__(self, connection: RedisConnection, coordination: RedisCoordination) -> None:
        self.connection = connection
        self.coordination = coordination
        self._keys = connection.keys
        self._run = connection.run

    @property
    def target(self) -> RedisTarget:
        return self.connection.target

    async def close(self) -> None:
        await self.connection.close()

    # -- reads -----------------------------------------------------------------------------

    async def list_apps(self) -> list[AppInfo]:
        flat = await self._run(scripts.LIST_APPS, [self._keys.apps], [self._keys.prefix])
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        return sorted((AppInfo(unquote(app), int(n)) for app, n in pairs), key=lambda a: a.app)

    async def list_routes(self, app: str) -> list[Route]:
        k = self._keys
        records = await self._run(scripts.LIST_ROUTES, [k.apps], [k.prefix, app_segment(app)])
        if records is None:
            raise NotFound(f"app {app!r} not found")
        return _routes(records)

    async def all_routes(self) -> list[Route]:
        records = await self._run(scripts.ALL_ROUTES, [self._keys.apps], [self._keys.prefix])
        return _routes(records)

    async def get_route(self, app: str, route_id: int) -> Route:
        k = self._keys
        record = await self._run(
            scripts.GET_ROUTE, [k.route(app, route_id)], [k.prefix, app_segment(app), route_id]
        )
        if record is None:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return _route(record)

    async def ports_in_use(self, frontend_ip: str) -> set[int]:
        with self.connection.reachable():
            ports = await cast(Any, self.connection.client.hkeys(self._keys.ip_ports(frontend_ip)))
        return {int(port) for port in ports}

    async def get_port_cursor(self, frontend_ip: str) -> int | None:
        with self.connection.reachable():
            cursor = await cast(
                Any, self.connection.client.hget(self._keys.port_cursors, frontend_ip)
            )
        return None if cursor is None else int(cursor)

    # -- writes ----------------------------------------------------------------------------

    async def create_route(
        self, app: str, frontend_ip: str, port: int, settings: RouteSettings
    ) -> Route:
        k = self._keys
        created, value = await self._run(
            scripts.CREATE_ROUTE,
            k.route_indexes(app, frontend_ip),
            [k.prefix, app_segment(app), frontend_ip, port, dump_route_settings(settings)],
        )
        if not created:
            raise address_taken(frontend_ip, port, str(value))
        return Route(app, int(value), frontend_ip, port, settings, version=1)

    async def update_route(self, app: str, route_id: int, settings: RouteSettings) -> Route:
        k = self._keys
        record = await self._run(
            scripts.UPDATE_ROUTE,
            [k.route(app, route_id)],
            [k.prefix, app_segment(app), route_id, dump_route_settings(settings)],
        )
        if record is None:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        if record[0] == 0:  # scripts.UPDATE_ROUTE: a server name clash, nothing written
            name, other = str(record[1]), describe_member(str(record[2]))
            if not name:
                raise Conflict(
                    f"its port is shared with {other}: only routes with their own server "
                    "names (sni) share it"
                )
            raise Conflict(f"server name {name!r} on its port is claimed by {other} already")
        return _route(record)

    async def touch_route(self, app: str, route_id: int) -> None:
        touched = await self._run(scripts.TOUCH_ROUTE, [self._keys.route(app, route_id)], [])
        if not touched:
            raise NotFound(f"route {route_id} of app {app!r} not found")

    async def delete_route(self, app: str, route_id: int) -> None:
        k = self._keys
        deleted = await self._run(
            scripts.DELETE_ROUTE,
            [k.route(app, route_id), k.app_routes(app), k.frontend_ips],
            [k.prefix, app_segment(app), route_id],
        )
        if not deleted:
            raise NotFound(f"route {route_id} of app {app!r} not found")

    async def add_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        k = self._keys
        backend_id = await self._run(
            scripts.ADD_BACKEND,
            [k.route(app, route_id), k.backend_counter(app, route_id), k.backends(app, route_id)],
            [backend.ip, backend.port, dump_backend_settings(backend)],
        )
        _unique(backend_id, app, route_id, backend)
        if not backend_id:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return backend.replace(id=int(backend_id))

    async def update_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        k = self._keys
        status = await self._run(
            scripts.UPDATE_BACKEND,
            [
                k.route(app, route_id),
                k.backends(app, route_id),
                k.backend(app, route_id, backend.id),
            ],
            [backend.id, backend.ip, backend.port, dump_backend_settings(backend)],
        )
        _unique(status, app, route_id, backend)
        _found(status, app, route_id, backend.id)
        return backend

    async def delete_backend(self, app: str, route_id: int, backend_id: int) -> None:
        k = self._keys
        status = await self._run(
            scripts.DELETE_BACKEND,
            [
                k.route(app, route_id),
                k.backends(app, route_id),
                k.backend(app, route_id, backend_id),
                k.backends_live(app, route_id),
                k.backends_dead(app, route_id),
            ],
            [backend_id],
        )
        _found(status, app, route_id, backend_id)

    async def add_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        k = self._keys
        status = await self._run(
            scripts.ADD_TOXIC,
            [k.route(app, route_id), k.toxics(app, route_id), k.toxic_order(app, route_id)],
            [toxic.name, dump_toxic(toxic)],
        )
        if status == 0:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        if status < 0:
            raise DuplicateToxic(app, route_id, toxic.name)
        return toxic

    async def update_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        k = self._keys
        status = await self._run(
            scripts.UPDATE_TOXIC,
            [k.route(app, route_id), k.toxics(app, route_id)],
            [toxic.name, dump_toxic(toxic)],
        )
        _toxic_found(status, app, route_id, toxic.name)
        return toxic

    async def delete_toxic(self, app: str, route_id: int, name: str) -> None:
        k = self._keys
        status = await self._run(
            scripts.DELETE_TOXIC,
            [k.route(app, route_id), k.toxics(app, route_id), k.toxic_order(app, route_id)],
            [name],
        )
        _toxic_found(status, app, route_id, name)

    async def set_port_cursor(self, frontend_ip: str, cursor: int) -> None:
        await self._run(scripts.SET_PORT_CURSOR, [self._keys.port_cursors], [frontend_ip, cursor])

    # -- certificates ----------------------------------------------------------------------

    async def list_certificates(self) -> list[Certificate]:
        flat = await self._run(scripts.LIST_CERTIFICATES, [self._keys.certificates], [])
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        return sorted((_certificate(name, record) for name, record in pairs), key=_by_name)

    async def get_certificate(self, name: str) -> Certificate:
        record = await self._run(scripts.GET_CERTIFICATE, [self._keys.certificates], [name])
        if record is None:
            raise NotFound(f"certificate {name!r} not found")
        return _certificate(name, record)

    async def create_certificate(self, certificate: Certificate) -> None:
        created = await self._run(
            scripts.CREATE_CERTIFICATE,
            [self._keys.certificates],
            [certificate.name, _certificate_record(certificate)],
        )
        if not created:
            raise Conflict(f"a certificate named {certificate.name!r} exists")

    async def replace_certificate(self, certificate: Certificate) -> None:
        replaced = await self._run(
            scripts.REPLACE_CERTIFICATE,
            [self._keys.certificates],
            [certificate.name, _certificate_record(certificate)],
        )
        if not replaced:
            raise NotFound(f"certificate {certificate.name!r} not found")

    async def delete_certificate(self, name: str) -> None:
        deleted = await self._run(scripts.DELETE_CERTIFICATE, [self._keys.certificates], [name])
        if not deleted:
            raise NotFound(f"certificate {name!r} not found")

    # -- API tokens --------------------------------------------------------------------------

    async def create_token(self, app: str, token_hash: str, created_at: float) -> TokenInfo:
        k = self._keys
        record = json.dumps({"hash": token_hash, "created_at": created_at})
        token_id = await self._run(
            scripts.CREATE_TOKEN,
            [k.tokens, k.token_counter(app), k.app_tokens(app)],
            [app_segment(app), token_hash, record],
        )
        if not token_id:
            raise Conflict("a token with this hash is already stored")
        return TokenInfo(app, int(token_id), created_at)

    async def list_tokens(self, app: str) -> list[TokenInfo]:
        with self.connection.reachable():
            records = await cast(Any, self.connection.client.hgetall(self._keys.app_tokens(app)))
        return sorted(
            (_token(app, token_id, record) for token_id, record in records.items()),
            key=lambda t: t.id,
        )

    async def delete_token(self, app: str, token_id: int) -> None:
        k = self._keys
        deleted = await self._run(scripts.DELETE_TOKEN, [k.tokens, k.app_tokens(app)], [token_id])
        if not deleted:
            raise NotFound(f"token {token_id} of app {app!r} not found")

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        k = self._keys
        found = await self._run(scripts.FIND_TOKEN, [k.tokens], [k.prefix, token_hash])
        if found is None:
            return None
        app, token_id, record = found
        return _token(unquote(app), token_id, record)


def _found(status: int, app: str, route_id: int, backend_id: int) -> None:
    if status < 0:
        raise NotFound(f"route {route_id} of app {app!r} not found")
    if status == 0:
        raise NotFound(f"backend {backend_id} of route {route_id} of app {app!r} not found")


def _toxic_found(status: int, app: str, route_id: int, name: str) -> None:
    if status < 0:
        raise NotFound(f"route {route_id} of app {app!r} not found")
    if status == 0:
        raise NotFound(f"toxic {name!r} of route {route_id} of app {app!r} not found")


def _unique(result: Any, app: str, route_id: int, backend: Backend) -> None:
    """Raise DuplicateBackend if a backend script answered {'duplicate', id}."""
    if isinstance(result, list):
        raise DuplicateBackend(app, route_id, int(result[1]), backend.ip, backend.port)


def _routes(records: list[Any]) -> list[Route]:
    return sorted((_route(record) for record in records), key=lambda r: r.key)


def _route(record: list[Any]) -> Route:
    app, route_id, ip, port, settings, backends, toxics, version = record
    return Route(
        app=unquote(app),
        id=int(route_id),
        frontend_ip=ip,
        port=int(port),
        settings=load_route_settings(settings),
        backends=tuple(
            sorted(
                (
                    load_backend(int(b_id), b_ip, int(b_port), b_settings)
                    for b_id, b_ip, b_port, b_settings in backends
                ),
                key=lambda b: b.id,
            )
        ),
        toxics=tuple(load_toxic(name, t_settings) for name, t_settings in toxics),
        version=int(version),
    )


def _certificate(name: str, record: str) -> Certificate:
    fields = json.loads(record)
    return Certificate(name, fields["cert"], fields["key"])


def _certificate_record(certificate: Certificate) -> str:
    return json.dumps({"cert": certificate.cert, "key": certificate.key})


def _by_name(certificate: Certificate) -> str:
    return certificate.name


def _token(app: str, token_id: str | int, record: str) -> TokenInfo:
    return TokenInfo(app, int(token_id), float(json.loads(record)["created_at"]))
