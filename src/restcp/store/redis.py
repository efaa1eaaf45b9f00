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

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff

from restcp.errors import (
    Conflict,
    DuplicateBackend,
    EpochMismatch,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from restcp.model import Backend, Route, RouteSettings
from restcp.store.base import AppInfo, TokenInfo
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
    "health_check_interval": float,
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
# A pooled connection idle for longer is PINGed before it carries a command (see
# _revalidate): after Redis restarts or fails over, every idle connection is dead.
HEALTH_CHECK_INTERVAL: Final = 1.0


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


async def _revalidate(conn: AbstractConnection) -> None:
    """Before a command goes out on a connection that idled past its health-check interval:
    PING it, and if that fails (Redis restarted or failed over and closed it), connect again.
    Only the PING is lost, and it changes nothing: no command is ever sent twice (the store
    does not retry, see open_url). Without this, each connection the pool kept from before a
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


def open_url(url: str) -> RedisStore:
    """Opens no connection: the first call connects, so this never blocks or fails on I/O."""
    target = parse_url(url)
    options: dict[str, Any] = {
        **_DEFAULT_TIMEOUTS,
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
        return RedisStore(client, target)
    # The sentinels get the timeouts only: their credentials, if any, are not the master's.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    # Sentinel's constructor has no annotations; its instance is typed.
    sentinel: Sentinel = cast(Any, Sentinel)(list(target.hosts), sentinel_kwargs=sentinel_options)
    client = _revalidating(cast(Redis, sentinel.master_for(target.service, **common)))
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
        self.tokens = f"{prefix}tokens"
        self.nodes = f"{prefix}nodes"
        self.epoch = f"{prefix}epoch"

    def route_counter(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:route_counter"

    def token_counter(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:token_counter"

    def app_tokens(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:tokens"

    def app_routes(self, app: str) -> str:
        return f"{self.prefix}app:{app_segment(app)}:routes"

    def ip_routes(self, ip: str) -> str:
        return f"{self.prefix}ip:{ip}:routes"

    def ip_ports(self, ip: str) -> str:
        return f"{self.prefix}ip:{ip}:ports"

    def route_indexes(self, app: str, ip: str) -> list[str]:
        """The keys every script that adds a route updates, in the order the scripts read
        them as KEYS[1..6]: the app and IP sets and counters that index the route."""
        return [
            self.apps,
            self.route_counter(app),
            self.app_routes(app),
            self.frontend_ips,
            self.ip_routes(ip),
            self.ip_ports(ip),
        ]

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

    # Cluster coordination: short-lived, not part of the desired state.

    def lease(self, ip: str) -> str:
        return f"{self.prefix}lease:{ip}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"


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

# The id of a backend of the route other than ``except`` at ip:port, or nil: one address is
# one backend (the caller answers {'duplicate', id}). A backend that keeps its address is not
# checked, so that a pair stored before this rule can still be changed.
_SAME_ADDRESS = """
local function same_address(route, ip, port, except)
  for _, bid in ipairs(redis.call('SMEMBERS', route .. ':backends')) do
    if bid ~= except then
      local a = redis.call('HMGET', route .. ':backend:' .. bid, 'ip', 'port')
      if a[1] == ip and a[2] == port then return bid end
    end
  end
  return nil
end
"""

# KEYS: route, backend_counter, backends; ARGV: ip, port, settings. The new id, 0 without
# the route, or {'duplicate', id}.
_ADD_BACKEND = (
    _SAME_ADDRESS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local other = same_address(KEYS[1], ARGV[1], ARGV[2], '')
if other then return {'duplicate', other} end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1] .. ':backend:' .. id, 'ip', ARGV[1], 'port', ARGV[2],
           'settings', ARGV[3])
redis.call('SADD', KEYS[3], id)
return id
"""
)

# KEYS: route, backends, backend; ARGV: id, ip, port, settings.
# 1, 0 without the backend, -1 without the route, or {'duplicate', id}.
_UPDATE_BACKEND = (
    _SAME_ADDRESS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
local was = redis.call('HMGET', KEYS[3], 'ip', 'port')
if was[1] ~= ARGV[2] or was[2] ~= ARGV[3] then
  local other = same_address(KEYS[1], ARGV[2], ARGV[3], ARGV[1])
  if other then return {'duplicate', other} end
end
redis.call('HSET', KEYS[3], 'ip', ARGV[2], 'port', ARGV[3], 'settings', ARGV[4])
return 1
"""
)

# KEYS: route, backends, backend, backends_live, backends_dead; ARGV: id. As above.
_DELETE_BACKEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('LREM', KEYS[5], 0, ARGV[1])
return 1
"""

# KEYS: tokens, token_counter, app_tokens; ARGV: app, hash, record (JSON with the hash).
# The new id, or 0 if the hash is stored already.
_CREATE_TOKEN = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1] .. ':' .. id)
return id
"""

# KEYS: tokens, app_tokens; ARGV: id. 1, or 0 if there is none.
_DELETE_TOKEN = """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], cjson.decode(record)['hash'])
return 1
"""

# KEYS: tokens; ARGV: prefix, hash. {app, id, record}, or false.
_FIND_TOKEN = """
local member = redis.call('HGET', KEYS[1], ARGV[2])
if not member then return false end
local app, id = string.match(member, '^(.*):(%d+)$')
local record = redis.call('HGET', ARGV[1] .. 'app:' .. app .. ':tokens', id)
if not record then return false end
return {app, id, record}
"""

# -- cluster coordination scripts ------------------------------------------------------------

# KEYS: lease; ARGV: holder, ttl in ms. Renews a lease this holder has, takes a free one
# (SET NX PX), or leaves another holder's alone: {1, holder, 0} renewed, {2, holder, 0}
# acquired, {0, other holder, its remaining ms}.
_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, holder, 0}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  return {2, ARGV[1], 0}
end
return {0, holder, redis.call('PTTL', KEYS[1])}
"""

# KEYS: lease; ARGV: holder. Deletes the lease only if this holder still has it.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports, route, lease
# ARGV: prefix, app, ip, port, settings, id, holder
# _CREATE_ROUTE for an id given out before (reserve_route_id), by the node holding the IP's
# lease only: a node that lost its lease while it was binding must not store the route.
# {1, id}, {0, "app:id"} holding the address, {-1, lease holder}, {-2, 0} id never given out
# or stored already.
_CREATE_RESERVED_ROUTE = """
local holder = redis.call('GET', KEYS[8])
if holder ~= ARGV[7] then return {-1, holder or ''} end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[6]) > last or redis.call('EXISTS', KEYS[7]) == 1 then return {-2, 0} end
local owner = redis.call('HGET', KEYS[6], ARGV[4])
if owner then return {0, owner} end
local member = ARGV[2] .. ':' .. ARGV[6]
redis.call('HSET', KEYS[7], 'ip', ARGV[3], 'port', ARGV[4], 'settings', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[5], member)
redis.call('HSET', KEYS[6], ARGV[4], member)
return {1, ARGV[6]}
"""

# KEYS: nodes, node; ARGV: node id, record (JSON), ttl in ms.
_PUT_NODE = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: nodes; ARGV: prefix. The records of the live nodes; the ids of expired ones leave
# the set here, since nothing else would remove a node that was killed.
_LIST_NODES = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. 'node:' .. id)
  if record then out[#out + 1] = record else redis.call('SREM', KEYS[1], id) end
end
return out
"""


# Put before a guarded script: with an epoch expected (the last ARGV; the epoch key is the
# one before it), a Redis that holds another epoch, or none, is not touched at all.
_EPOCH_GUARD = """
local epoch_expected = ARGV[#ARGV]
if epoch_expected ~= '' then
  local epoch_found = redis.call('GET', ARGV[#ARGV - 1])
  if epoch_found ~= epoch_expected then
    return redis.error_reply('RESTCP_EPOCH ' .. (epoch_found or ''))
  end
end
"""
_EPOCH_ERROR = "RESTCP_EPOCH"


# KEYS: port_cursors; ARGV: ip, cursor. A script for the epoch guard only.
_SET_PORT_CURSOR = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: route_counter. A script for the epoch guard only.
_RESERVE_ROUTE_ID = """
return redis.call('INCR', KEYS[1])
"""

# KEYS: epoch; ARGV: a new epoch id. The epoch stored after: the one given if there was none.
_CLAIM_EPOCH = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports, route,
#       backend_counter, backends, epoch
# ARGV: prefix, app, id, ip, port, settings, route counter at least, backend counter at
#       least, epoch, then (backend id, ip, port, settings) for each backend.
# Writes a route with its ids as a node's snapshot has it (reseed), never over another
# one: {1, ''} written, {2, ''} stored already exactly so, {0, why} conflicting content
# (nothing written), {-1, epoch found} Redis holds another epoch (nothing written).
_RESTORE_ROUTE = """
local found = redis.call('GET', KEYS[10])
if found ~= ARGV[9] then return {-1, found or ''} end
local function at_least(key, value)
  if tonumber(redis.call('GET', key) or '0') < tonumber(value) then
    redis.call('SET', key, value)
  end
end
local member = ARGV[2] .. ':' .. ARGV[3]
local r = redis.call('HMGET', KEYS[7], 'ip', 'port', 'settings')
if r[1] then
  if r[1] ~= ARGV[4] or r[2] ~= ARGV[5] or r[3] ~= ARGV[6] then
    return {0, 'stored with another address or other settings'}
  end
  local count = 0
  for i = 10, #ARGV, 4 do
    count = count + 1
    local b = redis.call('HMGET', KEYS[7] .. ':backend:' .. ARGV[i], 'ip', 'port', 'settings')
    if redis.call('SISMEMBER', KEYS[9], ARGV[i]) == 0 or b[1] ~= ARGV[i + 1]
        or b[2] ~= ARGV[i + 2] or b[3] ~= ARGV[i + 3] then
      return {0, 'stored with other backends'}
    end
  end
  if redis.call('SCARD', KEYS[9]) ~= count then return {0, 'stored with other backends'} end
  at_least(KEYS[2], ARGV[7])
  at_least(KEYS[8], ARGV[8])
  return {2, ''}
end
local owner = redis.call('HGET', KEYS[6], ARGV[5])
if owner then return {0, 'its address is used by route ' .. owner} end
redis.call('HSET', KEYS[7], 'ip', ARGV[4], 'port', ARGV[5], 'settings', ARGV[6])
for i = 10, #ARGV, 4 do
  redis.call('HSET', KEYS[7] .. ':backend:' .. ARGV[i], 'ip', ARGV[i + 1], 'port', ARGV[i + 2],
             'settings', ARGV[i + 3])
  redis.call('SADD', KEYS[9], ARGV[i])
end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SADD', KEYS[5], member)
redis.call('HSET', KEYS[6], ARGV[5], member)
at_least(KEYS[2], ARGV[7])
at_least(KEYS[8], ARGV[8])
return {1, ''}
"""

# KEYS: route, backends, backends_live, backends_dead; ARGV: live count, dead count, the
# live ids, the dead ids. Replaces both lists, keeping only ids of the route's backends;
# 0 (nothing written) if the route is gone.
_PUT_HEALTH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4])
local live, dead = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, 2 + live + dead do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
    redis.call('RPUSH', i <= 2 + live and KEYS[3] or KEYS[4], ARGV[i])
  end
end
return 1
"""


class _Script:
    """A registered script with a typed call: EVALSHA, and SCRIPT LOAD on NOSCRIPT (a new
    or restarted server, a Sentinel failover). ``guard``: the script runs only while Redis
    holds the epoch it returns (epoch key, expected epoch; '' expects nothing)."""

    def __init__(
        self, client: Redis, source: str, guard: Callable[[], tuple[str, str]] | None = None
    ) -> None:
        self._guard = guard
        self._script = client.register_script(source if guard is None else _EPOCH_GUARD + source)

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        if self._guard is not None:
            args = [*args, *self._guard()]
        return await self._script(keys=keys, args=args)


# -- pub/sub -------------------------------------------------------------------------------


class Subscription:
    """One pub/sub connection of its own. A lost connection raises Unavailable and leaves
    the subscription unusable on purpose: redis-py would reconnect and resubscribe quietly,
    but whatever was published meanwhile is gone, and only the caller knows to resync after
    opening a new one."""

    def __init__(self, client: Redis, prefix: str, describe: str, wait: float) -> None:
        self._pubsub = client.pubsub()
        self._prefix = prefix
        self._describe = describe
        self._wait = wait
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
        # The epoch this store's reads and writes of the desired state expect (None: any,
        # until the node has decided which cluster it belongs to): see expect_epoch.
        self._epoch: str | None = None
        guard = self._epoch_args
        self._get_route = _Script(client, _GET_ROUTE, guard)
        self._list_routes = _Script(client, _LIST_ROUTES, guard)
        self._all_routes = _Script(client, _ALL_ROUTES, guard)
        self._list_apps = _Script(client, _LIST_APPS, guard)
        self._create_route = _Script(client, _CREATE_ROUTE, guard)
        self._update_route = _Script(client, _UPDATE_ROUTE, guard)
        self._delete_route = _Script(client, _DELETE_ROUTE, guard)
        self._add_backend = _Script(client, _ADD_BACKEND, guard)
        self._update_backend = _Script(client, _UPDATE_BACKEND, guard)
        self._delete_backend = _Script(client, _DELETE_BACKEND, guard)
        self._create_token = _Script(client, _CREATE_TOKEN, guard)
        self._delete_token = _Script(client, _DELETE_TOKEN, guard)
        self._find_token = _Script(client, _FIND_TOKEN)
        self._set_port_cursor = _Script(client, _SET_PORT_CURSOR, guard)
        self._reserve_route_id = _Script(client, _RESERVE_ROUTE_ID, guard)
        self._claim_epoch = _Script(client, _CLAIM_EPOCH)
        self._restore_route = _Script(client, _RESTORE_ROUTE)
        self._put_health = _Script(client, _PUT_HEALTH, guard)
        self._acquire_lease = _Script(client, _ACQUIRE_LEASE)
        self._release_lease = _Script(client, _RELEASE_LEASE)
        self._create_reserved_route = _Script(client, _CREATE_RESERVED_ROUTE, guard)
        self._put_node = _Script(client, _PUT_NODE)
        self._list_nodes = _Script(client, _LIST_NODES)
        # How long a new subscription may take to be confirmed: a reply's patience.
        self._wait = float(dict(target.options).get("socket_timeout", 10.0))

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
        except redis.exceptions.ResponseError as err:
            text = str(err)
            if not text.startswith(_EPOCH_ERROR) or self._epoch is None:
                raise
            found = text.removeprefix(_EPOCH_ERROR).strip() or None
            raise EpochMismatch(self._epoch, found) from None

    def _epoch_args(self) -> tuple[str, str]:
        return self.keys.epoch, self._epoch or ""

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
                    *k.route_indexes(app, frontend_ip),
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
        _unique(backend_id, app, route_id, backend)
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
        _unique(status, app, route_id, backend)
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
            await self._set_port_cursor([self.keys.port_cursors], [frontend_ip, cursor])

    # -- API tokens --------------------------------------------------------------------------

    async def create_token(self, app: str, token_hash: str, created_at: float) -> TokenInfo:
        k = self.keys
        record = json.dumps({"hash": token_hash, "created_at": created_at})
        with self._reachable():
            token_id = await self._create_token(
                [k.tokens, k.token_counter(app), k.app_tokens(app)],
                [app_segment(app), token_hash, record],
            )
        if not token_id:
            raise Conflict("a token with this hash is already stored")
        return TokenInfo(app, int(token_id), created_at)

    async def list_tokens(self, app: str) -> list[TokenInfo]:
        with self._reachable():
            records = await cast(Any, self._client.hgetall(self.keys.app_tokens(app)))
        return sorted(
            (_token(app, token_id, record) for token_id, record in records.items()),
            key=lambda t: t.id,
        )

    async def delete_token(self, app: str, token_id: int) -> None:
        with self._reachable():
            deleted = await self._delete_token(
                [self.keys.tokens, self.keys.app_tokens(app)], [token_id]
            )
        if not deleted:
            raise NotFound(f"token {token_id} of app {app!r} not found")

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        with self._reachable():
            found = await self._find_token([self.keys.tokens], [self.keys.prefix, token_hash])
        if found is None:
            return None
        app, token_id, record = found
        return _token(unquote(app), token_id, record)

    # -- cluster coordination --------------------------------------------------------------
    # Pub/sub, leases and the node registry, for restcp.cluster. Channel names are given
    # and returned without the prefix, which they carry in Redis like every key: pub/sub
    # ignores database numbers, so the prefix is what keeps two clusters on one Redis apart.

    async def publish(self, channel: str, message: str) -> int:
        """Send ``message``; the number of subscriptions that received it (0: nobody
        listens, and the message is gone)."""
        with self._reachable():
            receivers = await cast(Any, self._client.publish(self.keys.prefix + channel, message))
        return int(receivers)

    async def subscribers(self, channel: str) -> int:
        with self._reachable():
            counts = await cast(Any, self._client.pubsub_numsub(self.keys.prefix + channel))
        return sum(int(n) for _, n in counts)

    async def channels(self, pattern: str) -> list[str]:
        """The channels matching the glob ``pattern`` that someone is subscribed to."""
        prefix = self.keys.prefix
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
        with self._reachable():
            names = await cast(Any, self._client.pubsub_channels(escaped + pattern))
        return sorted(str(name).removeprefix(prefix) for name in names)

    def subscription(self) -> Subscription:
        """A new pub/sub connection, subscribed to nothing yet."""
        return Subscription(self._client, self.keys.prefix, self._target.describe(), self._wait)

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

    async def acquire_lease(self, ip: str, holder: str, ttl: float) -> tuple[int, str, float]:
        """Renew ``holder``'s lease of ``ip``, or take it if it is free, for ``ttl`` seconds.
        (2 acquired, 1 renewed, 0 held by another; the holder; seconds left of another's)."""
        with self._reachable():
            state, current, left_ms = await self._acquire_lease(
                [self.keys.lease(ip)], [holder, max(1, round(ttl * 1000))]
            )
        return int(state), str(current), max(0, int(left_ms)) / 1000

    async def release_lease(self, ip: str, holder: str) -> bool:
        with self._reachable():
            return bool(await self._release_lease([self.keys.lease(ip)], [holder]))

    async def reserve_route_id(self, app: str) -> int:
        """Give out the app's next route id for a route another node will store
        (``create_reserved_route``); an id whose route is never stored stays unused."""
        with self._reachable():
            return int(await self._reserve_route_id([self.keys.route_counter(app)], []))

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
        k = self.keys
        with self._reachable():
            status, value = await self._create_reserved_route(
                [
                    *k.route_indexes(app, frontend_ip),
                    k.route(app, route_id),
                    k.lease(frontend_ip),
                ],
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
            owner_app, _, owner_id = str(value).rpartition(":")
            raise Conflict(
                f"port {port} of {frontend_ip} is already used by route {owner_id} "
                f"of app {unquote(owner_app)!r}"
            )
        if status == -1:
            raise Unavailable(
                f"this node no longer holds the lease of {frontend_ip} "
                f"(held by {value or 'nobody'})"
            )
        if status == -2:
            raise Conflict(f"route {route_id} of app {app!r} was not reserved or exists already")
        return Route(app, route_id, frontend_ip, port, settings)

    async def put_node(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a node for ``GET /nodes``; it vanishes ``ttl`` seconds after
        its last refresh."""
        with self._reachable():
            await self._put_node(
                [self.keys.nodes, self.keys.node(node_id)],
                [node_id, json.dumps(record), max(1, round(ttl * 1000))],
            )

    async def drop_node(self, node_id: str) -> None:
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.node(node_id))
                pipe.srem(self.keys.nodes, node_id)
                await pipe.execute()

    async def list_nodes(self) -> list[dict[str, Any]]:
        with self._reachable():
            records = await self._list_nodes([self.keys.nodes], [self.keys.prefix])
        return [json.loads(record) for record in records]

    async def lease_holders(self, ips: Sequence[str]) -> dict[str, tuple[str, float]]:
        """ip -> (holder, seconds left) of the leases that exist."""
        if not ips:
            return {}
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                for ip in ips:
                    pipe.get(self.keys.lease(ip))
                    pipe.pttl(self.keys.lease(ip))
                replies = await pipe.execute()
        return {
            ip: (str(holder), max(0, int(left)) / 1000)
            for ip, holder, left in zip(ips, replies[0::2], replies[1::2], strict=True)
            if holder is not None
        }

    async def routes_per_ip(self, ips: Sequence[str]) -> dict[str, int]:
        if not ips:
            return {}
        with self._reachable():
            async with self._client.pipeline(transaction=False) as pipe:
                for ip in ips:
                    pipe.scard(self.keys.ip_routes(ip))
                counts = await pipe.execute()
        return {ip: int(n) for ip, n in zip(ips, counts, strict=True)}

    # -- epoch, reseed and health (docs/cluster.md) -------------------------------------------

    def expect_epoch(self, epoch: str | None) -> None:
        """From now on every read and write of the desired state runs only while Redis holds
        ``epoch``, and raises EpochMismatch otherwise (None: no check)."""
        self._epoch = epoch

    @property
    def expected_epoch(self) -> str | None:
        return self._epoch

    @property
    def identity(self) -> str:
        """Which cluster this is, for logs: the address and prefix, never the password."""
        return f"{self._target.describe()}?prefix={self.keys.prefix}"

    async def get_epoch(self) -> str | None:
        with self._reachable():
            epoch = await cast(Any, self._client.get(self.keys.epoch))
        return None if epoch is None else str(epoch)

    async def claim_epoch(self, candidate: str) -> str:
        """Store ``candidate`` as the epoch if Redis has none (SETNX); the epoch stored."""
        with self._reachable():
            return str(await self._claim_epoch([self.keys.epoch], [candidate]))

    async def restore_route(
        self, route: Route, epoch: str, route_counter: int = 0, backend_counter: int = 0
    ) -> tuple[str, str]:
        """Write ``route`` with its ids, port and backends if Redis holds ``epoch`` and no
        other content under its id or address; raise the counters to at least the ids (and
        the given counters). ("written" | "unchanged" | "conflict", why)."""
        k = self.keys
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
        ]
        for backend in route.backends:
            args += [backend.id, backend.ip, backend.port, dump_backend_settings(backend)]
        with self._reachable():
            status, detail = await self._restore_route(
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
            owner = str(detail)
            if owner.startswith("its address is used by route "):
                owner_app, _, owner_id = owner.removeprefix(
                    "its address is used by route "
                ).rpartition(":")
                owner = f"its address is used by route {owner_id} of app {unquote(owner_app)!r}"
            return "conflict", owner
        return ("written" if status == 1 else "unchanged"), ""

    async def put_backend_health(
        self, app: str, route_id: int, live: Sequence[int], dead: Sequence[int]
    ) -> bool:
        """Replace the route's ``backends_live`` and ``backends_dead`` lists; False if the
        route is not stored (nothing written)."""
        k = self.keys
        with self._reachable():
            written = await self._put_health(
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
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.lrange(self.keys.backends_live(app, route_id), 0, -1)
                pipe.lrange(self.keys.backends_dead(app, route_id), 0, -1)
                live, dead = await pipe.execute()
        health = {int(b): "down" for b in dead}
        health.update({int(b): "up" for b in live})
        return health

    @staticmethod
    def _found(status: int, app: str, route_id: int, backend_id: int) -> None:
        if status < 0:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        if status == 0:
            raise NotFound(f"backend {backend_id} of route {route_id} of app {app!r} not found")


def _unique(result: Any, app: str, route_id: int, backend: Backend) -> None:
    """Raise DuplicateBackend if a backend script answered {'duplicate', id}."""
    if isinstance(result, list):
        raise DuplicateBackend(app, route_id, int(result[1]), backend.ip, backend.port)


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


def _token(app: str, token_id: str | int, record: str) -> TokenInfo:
    return TokenInfo(app, int(token_id), float(json.loads(record)["created_at"]))
