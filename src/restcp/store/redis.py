"""The shared store: one Redis (or a Sentinel-watched master) that every node of a cluster uses.

Keys follow the seed's data model, one route per hash, with ids per app; docs/cluster.md
lists every key, its type and who writes it. Every change that touches more than one key,
or that has a precondition (the route exists, the address is free), is one Lua script:
Redis runs a script alone, so two API nodes creating routes at the same moment never share
an id or an address, and a script that finds a precondition false returns before its first
write, which is how a failed call changes nothing, counters included. Reads of routes with
their backends are scripts too, so they see one state.

The scripts compute some key names (a new route's, a route's backends') inside Lua, which
Redis Cluster forbids: this store is for one Redis or a Sentinel-managed master, not Cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from restcp.errors import Conflict, InvalidSpec, NotFound, Unavailable
from restcp.model import Backend, Route, RouteSettings
from restcp.store.base import AppInfo
from restcp.store.codec import (
    dump_backend_settings,
    dump_route_settings,
    load_backend,
    load_route_settings,
)

DEFAULT_PREFIX: Final = "restcp:"
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379
SCHEMES: Final = ("redis", "rediss", "redis+sentinel")


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


# URL query options besides ``prefix``, with their parsers. Anything else is refused when
# the store opens: redis-py would pass an unknown one on and fail at the first command.
_OPTIONS: Final[dict[str, Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "client_name": str,
    "max_connections": int,
}
_TLS_OPTIONS: Final[dict[str, Any]] = {
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": _flag,
}
# A store that cannot reach Redis should say so (503) within an API request's patience.
_DEFAULT_TIMEOUTS: Final = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}


# -- URLs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL points."""

    # One (host, port) for a plain Redis; the sentinels to ask for a Sentinel URL.
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    # The Sentinel service (``sentinel monitor NAME ...``); None for a plain Redis.
    service: str | None = None
    username: str | None = None
    password: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """For error messages: the address, never the password."""
        hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.hosts)
        if self.service is not None:
            return f"redis+sentinel://{hosts}/{self.service}/{self.db}"
        return f"{'rediss' if self.tls else 'redis'}://{hosts}/{self.db}"


def parse_url(url: str) -> RedisTarget:
    """``redis://[USER:PASSWORD@]HOST[:PORT][/DB][?prefix=P&...]``, ``rediss://`` alike with
    TLS, ``redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]``."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidSpec(f"store URL {url!r} is not a Redis URL ({', '.join(SCHEMES)})")
    sentinel = parts.scheme == "redis+sentinel"
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_host_port(url, item, default_port) for item in hostlist.split(","))
    if not sentinel and len(hosts) != 1:
        raise InvalidSpec(f"store URL {url!r} names several hosts: use redis+sentinel://")

    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if segments and segments[-1] == "":
        segments.pop()
    service = None
    if sentinel:
        if not segments or not segments[0]:
            raise InvalidSpec(
                f"store URL {url!r} names no Sentinel service: use "
                "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME/DB"
            )
        service = segments.pop(0)
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise InvalidSpec(f"store URL {url!r}: the path must be /DB, a database number")
    db = int(segments[0]) if segments else 0

    prefix = DEFAULT_PREFIX
    allowed = _OPTIONS | (_TLS_OPTIONS if parts.scheme == "rediss" else {})
    options: list[tuple[str, Any]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name == "prefix":
            prefix = value
        elif name in allowed:
            try:
                options.append((name, allowed[name](value)))
            except ValueError as err:
                raise InvalidSpec(f"store URL {url!r}: bad {name}={value!r}") from err
        else:
            known = ", ".join(["prefix", *allowed])
            raise InvalidSpec(f"store URL {url!r}: unknown option {name!r} (known: {known})")
    return RedisTarget(
        hosts=hosts,
        db=db,
        prefix=prefix,
        tls=parts.scheme == "rediss",
        service=service,
        username=username,
        password=password,
        options=tuple(options),
    )


def _host_port(url: str, item: str, default_port: int) -> tuple[str, int]:
    host, port = item, ""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise InvalidSpec(f"store URL {url!r}: bad address {item!r}")
        port = rest[1:]
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise InvalidSpec(f"store URL {url!r}: bad address {item!r}")
    return unquote(host), int(port) if port else default_port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def open_url(url: str) -> RedisStore:
    """Opens no connection: the first call connects, so this never blocks or fails on I/O."""
    target = parse_url(url)
    options: dict[str, Any] = {**_DEFAULT_TIMEOUTS, **dict(target.options)}
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
        client = Redis(host=host, port=port, ssl=target.tls, **common)
        return RedisStore(client, target)
    # The sentinels get the timeouts only: their credentials, if any, are not the master's.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    # Sentinel's constructor has no annotations; its instance is typed.
    sentinel: Sentinel = cast(Any, Sentinel)(list(target.hosts), sentinel_kwargs=sentinel_options)
    client = cast(Redis, sentinel.master_for(target.service, **common))
    return RedisStore(client, target, sentinel)


# -- keys ----------------------------------------------------------------------------------


def app_segment(app: str) -> str:
    """An app id as it appears in keys: percent-encoded, so that no id can contain the ``:``
    that separates key parts. The API's app ids ([A-Za-z0-9._-]) come out unchanged."""
    return quote(app, safe="")


class Keys:
    """Every key name this store uses; docs/cluster.md is their reference."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.apps = f"{prefix}apps"
        self.frontend_ips = f"{prefix}frontend_ips"
        self.port_cursors = f"{prefix}port_cursors"

    def route_counter(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:route_counter"

    def app_routes(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:routes"

    def ip_routes(self, ip: str) -> str:
        return f"{self.prefix}ip:{ip}:routes"

    def ip_ports(self, ip: str) -> str:
        return f"{self.prefix}ip:{ip}:ports"

    def route(self, app: str, route_id: int) -> str:
        return f"{self.prefix}route:{app_segment(app)}:{route_id}"

    def backend_counter(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backend_counter"

    def backends(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backends"

    def backend(self, app: str, route_id: int, backend_id: int) -> str:
        return f"{self.route(app, route_id)}:backend:{backend_id}"

    def backends_live(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backends_live"

    def backends_dead(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backends_dead"


# -- scripts -------------------------------------------------------------------------------
# Each script checks its preconditions before its first write and answers with a status, so
# that a refusal leaves every key as it was. Key names built in Lua must match Keys above.

_READ_ROUTE = """
-- {app, id, ip, port, settings, {{backend id, ip, port, settings}, ...}}, or false.
local function read_route(prefix, app, id)
  local key = prefix .. 'route:' .. app .. ':' .. id
  local r = redis.call('HMGET', key, 'ip', 'port', 'settings')
  if not r[1] then return false end
  local backends = {}
  for _, bid in ipairs(redis.call('SMEMBERS', key .. ':backends')) do
    local b = redis.call('HMGET', key .. ':backend:' .. bid, 'ip', 'port', 'settings')
    if b[1] then backends[#backends + 1] = {bid, b[1], b[2], b[3]} end
  end
  return {app, id, r[1], r[2], r[3], backends}
end

local function read_app(prefix, app, out)
  for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'app:' .. app .. ':routes')) do
    local route = read_route(prefix, app, id)
    if route then out[#out + 1] = route end
  end
  return out
end
"""

# KEYS: route; ARGV: prefix, app, id
_GET_ROUTE = (
    _READ_ROUTE
    + """
return read_route(ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: apps; ARGV: prefix, app. An app that never had a route is nil; one emptied is {}.
_LIST_ROUTES = (
    _READ_ROUTE
    + """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return false end
return read_app(ARGV[1], ARGV[2], {})
"""
)

# KEYS: apps; ARGV: prefix
_ALL_ROUTES = (
    _READ_ROUTE
    + """
local out = {}
for _, app in ipairs(redis.call('SMEMBERS', KEYS[1])) do read_app(ARGV[1], app, out) end
return out
"""
)

# KEYS: apps; ARGV: prefix. Flat: app, route count, app, route count, ...
_LIST_APPS = """
local out = {}
for _, app in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = app
  out[#out + 1] = redis.call('SCARD', ARGV[1] .. 'app:' .. app .. ':routes')
end
return out
"""

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports
# ARGV: prefix, app, ip, port, settings
# {1, id}, or {0, "app:id"} of the route that holds the address.
_CREATE_ROUTE = """
local owner = redis.call('HGET', KEYS[6], ARGV[4])
if owner then return {0, owner} end
local id = redis.call('INCR', KEYS[2])
local member = ARGV[2] .. ':' .. id
redis.call('HSET', ARGV[1] .. 'route:' .. member, 'ip', ARGV[3], 'port', ARGV[4],
           'settings', ARGV[5])
redis.call('SADD', KEYS[3], id)
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[5], member)
redis.call('HSET', KEYS[6], ARGV[4], member)
return {1, id}
"""

# KEYS: route; ARGV: prefix, app, id, settings. The route as stored after, or false.
_UPDATE_ROUTE = (
    _READ_ROUTE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'settings', ARGV[4])
return read_route(ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: route, app_routes, frontend_ips; ARGV: prefix, app, id. 1, or 0 if there is none.
_DELETE_ROUTE = """
local r = redis.call('HMGET', KEYS[1], 'ip', 'port')
local ip, port = r[1], r[2]
if not ip then return 0 end
for _, bid in ipairs(redis.call('SMEMBERS', KEYS[1] .. ':backends')) do
  redis.call('DEL', KEYS[1] .. ':backend:' .. bid)
end
redis.call('DEL', KEYS[1], KEYS[1] .. ':backends', KEYS[1] .. ':backend_counter',
           KEYS[1] .. ':backends_live', KEYS[1] .. ':backends_dead')
redis.call('SREM', KEYS[2], ARGV[3])
local ip_key = ARGV[1] .. 'ip:' .. ip
redis.call('SREM', ip_key .. ':routes', ARGV[2] .. ':' .. ARGV[3])
redis.call('HDEL', ip_key .. ':ports', port)
if redis.call('SCARD', ip_key .. ':routes') == 0 then redis.call('SREM', KEYS[3], ip) end
return 1
"""

# KEYS: route, backend_counter, backends; ARGV: ip, port, settings. The new id, or 0.
_ADD_BACKEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1] .. ':backend:' .. id, 'ip', ARGV[1], 'port', ARGV[2],
           'settings', ARGV[3])
redis.call('SADD', KEYS[3], id)
return id
"""

# KEYS: route, backends, backend; ARGV: id, ip, port, settings.
# 1, 0 without the backend, -1 without the route.
_UPDATE_BACKEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'ip', ARGV[2], 'port', ARGV[3], 'settings', ARGV[4])
return 1
"""

# KEYS: route, backends, backend, backends_live, backends_dead; ARGV: id. As above.
_DELETE_BACKEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('LREM', KEYS[5], 0, ARGV[1])
return 1
"""


class _Script:
    """A registered script with a typed call: EVALSHA, and SCRIPT LOAD on NOSCRIPT (a new
    or restarted server, a Sentinel failover)."""

    def __init__(self, client: Redis, source: str) -> None:
        self._script = client.register_script(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await self._script(keys=keys, args=args)


# -- the store -----------------------------------------------------------------------------


class RedisStore:
    def __init__(
        self, client: Redis, target: RedisTarget, sentinel: Sentinel | None = None
    ) -> None:
        self._client = client
        self._sentinel = sentinel
        self._target = target
        self._closed = False
        self.keys = Keys(target.prefix)
        self._get_route = _Script(client, _GET_ROUTE)
        self._list_routes = _Script(client, _LIST_ROUTES)
        self._all_routes = _Script(client, _ALL_ROUTES)
        self._list_apps = _Script(client, _LIST_APPS)
        self._create_route = _Script(client, _CREATE_ROUTE)
        self._update_route = _Script(client, _UPDATE_ROUTE)
        self._delete_route = _Script(client, _DELETE_ROUTE)
        self._add_backend = _Script(client, _ADD_BACKEND)
        self._update_backend = _Script(client, _UPDATE_BACKEND)
        self._delete_backend = _Script(client, _DELETE_BACKEND)

    @property
    def target(self) -> RedisTarget:
        return self._target

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._client.aclose()
        finally:
            if self._sentinel is not None:
                await self._sentinel.aclose()

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        # ReadOnlyError: a replica answered, as happens for a moment during a failover.
        try:
            yield
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,
        ) as err:
            raise Unavailable(f"store {self._target.describe()} is unavailable: {err}") from err

    # -- reads -----------------------------------------------------------------------------

    async def list_apps(self) -> list[AppInfo]:
        with self._reachable():
            flat = await self._list_apps([self.keys.apps], [self.keys.prefix])
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        return sorted((AppInfo(unquote(app), int(n)) for app, n in pairs), key=lambda a: a.app)

    async def list_routes(self, app: str) -> list[Route]:
        with self._reachable():
            records = await self._list_routes(
                [self.keys.apps], [self.keys.prefix, app_segment(app)]
            )
        if records is None:
            raise NotFound(f"app {app!r} not found")
        return _routes(records)

    async def all_routes(self) -> list[Route]:
        with self._reachable():
            records = await self._all_routes([self.keys.apps], [self.keys.prefix])
        return _routes(records)

    async def get_route(self, app: str, route_id: int) -> Route:
        with self._reachable():
            record = await self._get_route(
                [self.keys.route(app, route_id)],
                [self.keys.prefix, app_segment(app), route_id],
            )
        if record is None:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return _route(record)

    async def ports_in_use(self, frontend_ip: str) -> set[int]:
        with self._reachable():
            ports = await cast(Any, self._client.hkeys(self.keys.ip_ports(frontend_ip)))
        return {int(port) for port in ports}

    async def get_port_cursor(self, frontend_ip: str) -> int | None:
        with self._reachable():
            cursor = await cast(Any, self._client.hget(self.keys.port_cursors, frontend_ip))
        return None if cursor is None else int(cursor)

    # -- writes ----------------------------------------------------------------------------

    async def create_route(
        self, app: str, frontend_ip: str, port: int, settings: RouteSettings
    ) -> Route:
        k = self.keys
        with self._reachable():
            created, value = await self._create_route(
                [
                    k.apps,
                    k.route_counter(app),
                    k.app_routes(app),
                    k.frontend_ips,
                    k.ip_routes(frontend_ip),
                    k.ip_ports(frontend_ip),
                ],
                [k.prefix, app_segment(app), frontend_ip, port, dump_route_settings(settings)],
            )
        if not created:
            owner_app, _, owner_id = str(value).rpartition(":")
            raise Conflict(
                f"port {port} of {frontend_ip} is already used by route {owner_id} "
                f"of app {unquote(owner_app)!r}"
            )
        return Route(app, int(value), frontend_ip, port, settings)

    async def update_route(self, app: str, route_id: int, settings: RouteSettings) -> Route:
        with self._reachable():
            record = await self._update_route(
                [self.keys.route(app, route_id)],
                [self.keys.prefix, app_segment(app), route_id, dump_route_settings(settings)],
            )
        if record is None:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return _route(record)

    async def delete_route(self, app: str, route_id: int) -> None:
        k = self.keys
        with self._reachable():
            deleted = await self._delete_route(
                [k.route(app, route_id), k.app_routes(app), k.frontend_ips],
                [k.prefix, app_segment(app), route_id],
            )
        if not deleted:
            raise NotFound(f"route {route_id} of app {app!r} not found")

    async def add_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        k = self.keys
        with self._reachable():
            backend_id = await self._add_backend(
                [
                    k.route(app, route_id),
                    k.backend_counter(app, route_id),
                    k.backends(app, route_id),
                ],
                [backend.ip, backend.port, dump_backend_settings(backend)],
            )
        if not backend_id:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return backend.replace(id=int(backend_id))

    async def update_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        k = self.keys
        with self._reachable():
            status = await self._update_backend(
                [
                    k.route(app, route_id),
                    k.backends(app, route_id),
                    k.backend(app, route_id, backend.id),
                ],
                [backend.id, backend.ip, backend.port, dump_backend_settings(backend)],
            )
        self._found(status, app, route_id, backend.id)
        return backend

    async def delete_backend(self, app: str, route_id: int, backend_id: int) -> None:
        k = self.keys
        with self._reachable():
            status = await self._delete_backend(
                [
                    k.route(app, route_id),
                    k.backends(app, route_id),
                    k.backend(app, route_id, backend_id),
                    k.backends_live(app, route_id),
                    k.backends_dead(app, route_id),
                ],
                [backend_id],
            )
        self._found(status, app, route_id, backend_id)

    async def set_port_cursor(self, frontend_ip: str, cursor: int) -> None:
        with self._reachable():
            await cast(Any, self._client.hset(self.keys.port_cursors, frontend_ip, cursor))

    @staticmethod
    def _found(status: int, app: str, route_id: int, backend_id: int) -> None:
        if status < 0:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        if status == 0:
            raise NotFound(f"backend {backend_id} of route {route_id} of app {app!r} not found")


def _routes(records: list[Any]) -> list[Route]:
    return sorted((_route(record) for record in records), key=lambda r: r.key)


def _route(record: list[Any]) -> Route:
    app, route_id, ip, port, settings, backends = record
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
    )
