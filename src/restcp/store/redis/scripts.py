"""The Lua scripts of the Redis store: each named once here, registered once per connection
(connection.py), run with EVALSHA, and sent again with SCRIPT LOAD on NOSCRIPT (a new or
restarted server, a Sentinel failover).

Every change that touches more than one key, or that has a precondition (the route exists,
the address is free), is one script: Redis runs a script alone, so two API nodes creating
routes at the same moment never share an id or an address, and a script that finds a
precondition false returns before its first write, which is how a failed call changes
nothing, counters included. Reads of routes with their backends are scripts too, so they see
one state. Key names built in Lua must match keys.py: Redis Cluster forbids computed names,
so this store is for one Redis or a Sentinel-managed master, not Cluster.

The epoch (docs/cluster.md, "Redis that lost its data") guards every script that reads or
writes the desired state: a guarded script starts with _EPOCH_GUARD, which returns an error
(EPOCH_ERROR) before anything else while Redis holds another epoch than the one the node
follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The error a guarded script answers with, followed by the epoch Redis holds ('' for none).
EPOCH_ERROR: Final = "RESTCP_EPOCH"

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


@dataclass(frozen=True, slots=True)
class Script:
    """A script as Redis runs it. ``guarded``: it starts with the epoch guard, and whoever
    runs it appends the epoch key and the expected epoch to its ARGV."""

    source: str
    guarded: bool


def _guarded(source: str) -> Script:
    return Script(_EPOCH_GUARD + source, guarded=True)


def _unguarded(source: str) -> Script:
    return Script(source, guarded=False)


# Each script checks its preconditions before its first write and answers with a status, so
# that a refusal leaves every key as it was.

# -- the desired state: routes, backends, port cursors, tokens ---------------------------

_READ_ROUTE = """
-- {app, id, ip, port, settings, {{backend id, ip, port, settings}, ...},
--  {{toxic name, settings}, ...} in their order, version}, or false.
local function read_route(prefix, app, id)
  local key = prefix .. 'route:' .. app .. ':' .. id
  local r = redis.call('HMGET', key, 'ip', 'port', 'settings', 'version')
  if not r[1] then return false end
  local backends = {}
  for _, bid in ipairs(redis.call('SMEMBERS', key .. ':backends')) do
    local b = redis.call('HMGET', key .. ':backend:' .. bid, 'ip', 'port', 'settings')
    if b[1] then backends[#backends + 1] = {bid, b[1], b[2], b[3]} end
  end
  local toxics = {}
  for _, name in ipairs(redis.call('LRANGE', key .. ':toxic_order', 0, -1)) do
    local t = redis.call('HGET', key .. ':toxics', name)
    if t then toxics[#toxics + 1] = {name, t} end
  end
  return {app, id, r[1], r[2], r[3], backends, toxics, tonumber(r[4] or '0')}
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
GET_ROUTE: Final = _guarded(
    _READ_ROUTE
    + """
return read_route(ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: apps; ARGV: prefix, app. An app that never had a route is nil; one emptied is {}.
LIST_ROUTES: Final = _guarded(
    _READ_ROUTE
    + """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return false end
return read_app(ARGV[1], ARGV[2], {})
"""
)

# KEYS: apps; ARGV: prefix
ALL_ROUTES: Final = _guarded(
    _READ_ROUTE
    + """
local out = {}
for _, app in ipairs(redis.call('SMEMBERS', KEYS[1])) do read_app(ARGV[1], app, out) end
return out
"""
)

# KEYS: apps; ARGV: prefix. Flat: app, route count, app, route count, ...
LIST_APPS: Final = _guarded(
    """
local out = {}
for _, app in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = app
  out[#out + 1] = redis.call('SCARD', ARGV[1] .. 'app:' .. app .. ':routes')
end
return out
"""
)

# An IP's ports hash (ip_ports) holds, for each port, the member of the route that has it
# alone, or SHARED while routes with server names (their settings' "sni") share it; the
# hash's ":shared" companion counts those routes by port.
_ADDRESS = """
local SHARED = '*sni'
local function has_sni(settings)
  local sni = cjson.decode(settings).sni
  return sni ~= nil and sni ~= cjson.null
end
-- nil once the route holds (or shares) the port; else the member or SHARED in the way.
local function take_address(ports, port, member, settings)
  local owner = redis.call('HGET', ports, port)
  local shared = has_sni(settings)
  if owner and not (shared and owner == SHARED) then return owner end
  if shared then
    redis.call('HSET', ports, port, SHARED)
    redis.call('HINCRBY', ports .. ':shared', port, 1)
  else
    redis.call('HSET', ports, port, member)
  end
  return nil
end
local function free_address(ports, port, member)
  local owner = redis.call('HGET', ports, port)
  if owner == SHARED then
    if redis.call('HINCRBY', ports .. ':shared', port, -1) <= 0 then
      redis.call('HDEL', ports, port)
      redis.call('HDEL', ports .. ':shared', port)
    end
  elseif owner == member then
    redis.call('HDEL', ports, port)
  end
end
-- A route alone on its port that gains server names shares it from now on; the last
-- route sharing a port that loses them holds it alone (the route service refuses the
-- change while others share it).
local function readdress(ports, port, member, settings)
  local owner = redis.call('HGET', ports, port)
  if has_sni(settings) then
    if owner == member then
      redis.call('HSET', ports, port, SHARED)
      redis.call('HSET', ports .. ':shared', port, 1)
    end
  elseif owner == SHARED and tonumber(redis.call('HGET', ports .. ':shared', port)) == 1 then
    redis.call('HSET', ports, port, member)
    redis.call('HDEL', ports .. ':shared', port)
  end
end
"""

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports
# ARGV: prefix, app, ip, port, settings
# {1, id}, or {0, "app:id"} of the route that holds the address.
CREATE_ROUTE: Final = _guarded(
    _ADDRESS
    + """
local id = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local member = ARGV[2] .. ':' .. id
local owner = take_address(KEYS[6], ARGV[4], member, ARGV[5])
if owner then return {0, owner} end
redis.call('SET', KEYS[2], id)
redis.call('HSET', ARGV[1] .. 'route:' .. member, 'ip', ARGV[3], 'port', ARGV[4],
           'settings', ARGV[5], 'version', 1)
redis.call('SADD', KEYS[3], id)
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[5], member)
return {1, id}
"""
)

# KEYS: route; ARGV: prefix, app, id, settings. The route as stored after, or false.
UPDATE_ROUTE: Final = _guarded(
    _READ_ROUTE
    + _ADDRESS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local r = redis.call('HMGET', KEYS[1], 'ip', 'port')
local member = ARGV[2] .. ':' .. ARGV[3]
-- Server names clash with another route's on the address, or are lost while others share
-- it: {0, name ('' when lost), the other's member}, nothing written.
local ip_key = ARGV[1] .. 'ip:' .. r[1]
if redis.call('HGET', ip_key .. ':ports', r[2]) == SHARED then
  local new = cjson.decode(ARGV[4]).sni
  if new == cjson.null then new = nil end
  for _, other in ipairs(redis.call('SMEMBERS', ip_key .. ':routes')) do
    if other ~= member then
      local o = redis.call('HMGET', ARGV[1] .. 'route:' .. other, 'port', 'settings')
      if o[1] == r[2] then
        if new == nil then return {0, '', other} end
        local theirs = cjson.decode(o[2]).sni
        if theirs ~= nil and theirs ~= cjson.null then
          local seen = {}
          for _, name in ipairs(theirs) do seen[name] = true end
          for _, name in ipairs(new) do
            if seen[name] then return {0, name, other} end
          end
        end
      end
    end
  end
end
readdress(ARGV[1] .. 'ip:' .. r[1] .. ':ports', r[2], ARGV[2] .. ':' .. ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], 'settings', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return read_route(ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: route. 1, or 0 if there is none.
TOUCH_ROUTE: Final = _guarded(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# KEYS: route, app_routes, frontend_ips; ARGV: prefix, app, id. 1, or 0 if there is none.
DELETE_ROUTE: Final = _guarded(
    _ADDRESS
    + """
local r = redis.call('HMGET', KEYS[1], 'ip', 'port')
local ip, port = r[1], r[2]
if not ip then return 0 end
for _, bid in ipairs(redis.call('SMEMBERS', KEYS[1] .. ':backends')) do
  redis.call('DEL', KEYS[1] .. ':backend:' .. bid)
end
redis.call('DEL', KEYS[1], KEYS[1] .. ':backends', KEYS[1] .. ':backend_counter',
           KEYS[1] .. ':backends_live', KEYS[1] .. ':backends_dead', KEYS[1] .. ':toxics',
           KEYS[1] .. ':toxic_order')
redis.call('SREM', KEYS[2], ARGV[3])
local ip_key = ARGV[1] .. 'ip:' .. ip
redis.call('SREM', ip_key .. ':routes', ARGV[2] .. ':' .. ARGV[3])
free_address(ip_key .. ':ports', port, ARGV[2] .. ':' .. ARGV[3])
if redis.call('SCARD', ip_key .. ':routes') == 0 then redis.call('SREM', KEYS[3], ip) end
return 1
"""
)

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
ADD_BACKEND: Final = _guarded(
    _SAME_ADDRESS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local other = same_address(KEYS[1], ARGV[1], ARGV[2], '')
if other then return {'duplicate', other} end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1] .. ':backend:' .. id, 'ip', ARGV[1], 'port', ARGV[2],
           'settings', ARGV[3])
redis.call('SADD', KEYS[3], id)
redis.call('HINCRBY', KEYS[1], 'version', 1)
return id
"""
)

# KEYS: route, backends, backend; ARGV: id, ip, port, settings.
# 1, 0 without the backend, -1 without the route, or {'duplicate', id}.
UPDATE_BACKEND: Final = _guarded(
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
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# KEYS: route, backends, backend, backends_live, backends_dead; ARGV: id. As above.
DELETE_BACKEND: Final = _guarded(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('LREM', KEYS[5], 0, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# A route's toxics: ``toxics`` holds each one's settings by name, ``toxic_order`` their
# names in the order they were added.

# KEYS: route, toxics, toxic_order; ARGV: name, settings. 1, 0 without the route, -1 if the
# route has a toxic of that name.
ADD_TOXIC: Final = _guarded(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# KEYS: route, toxics; ARGV: name, settings. 1, 0 without the toxic, -1 without the route.
UPDATE_TOXIC: Final = _guarded(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# KEYS: route, toxics, toxic_order; ARGV: name. As UPDATE_TOXIC.
DELETE_TOXIC: Final = _guarded(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
)

# KEYS: port_cursors; ARGV: ip, cursor. A script for the epoch guard only.
SET_PORT_CURSOR: Final = _guarded(
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: tokens, token_counter, app_tokens; ARGV: app, hash, record (JSON with the hash).
# The new id, or 0 if the hash is stored already.
CREATE_TOKEN: Final = _guarded(
    """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1] .. ':' .. id)
return id
"""
)

# KEYS: tokens, app_tokens; ARGV: id. 1, or 0 if there is none.
DELETE_TOKEN: Final = _guarded(
    """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], cjson.decode(record)['hash'])
return 1
"""
)

# KEYS: tokens; ARGV: prefix, hash. {app, id, record}, or false.
FIND_TOKEN: Final = _unguarded(
    """
local member = redis.call('HGET', KEYS[1], ARGV[2])
if not member then return false end
local app, id = string.match(member, '^(.*):(%d+)$')
local record = redis.call('HGET', ARGV[1] .. 'app:' .. app .. ':tokens', id)
if not record then return false end
return {app, id, record}
"""
)

# KEYS: certificates; ARGV: name, record. 1, or 0 if one of that name is stored.
CREATE_CERTIFICATE: Final = _guarded(
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: certificates; ARGV: name, record. 1, or 0 if there is none of that name.
REPLACE_CERTIFICATE: Final = _guarded(
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: certificates; ARGV: name. 1, or 0 if there is none.
DELETE_CERTIFICATE: Final = _guarded(
    """
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
)

# KEYS: certificates; ARGV: name. The record, or false. A script for the epoch guard.
GET_CERTIFICATE: Final = _guarded(
    """
return redis.call('HGET', KEYS[1], ARGV[1])
"""
)

# KEYS: certificates. Flat: name, record, name, record, ...
LIST_CERTIFICATES: Final = _guarded(
    """
return redis.call('HGETALL', KEYS[1])
"""
)

# -- cluster coordination: route ids for other nodes, leases, nodes, the epoch, health -----

# KEYS: route_counter. A script for the epoch guard only.
RESERVE_ROUTE_ID: Final = _guarded(
    """
return redis.call('INCR', KEYS[1])
"""
)

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports, route, lease
# ARGV: prefix, app, ip, port, settings, id, holder
# _CREATE_ROUTE for an id given out before (reserve_route_id), by the node holding the IP's
# lease only: a node that lost its lease while it was binding must not store the route.
# {1, id}, {0, "app:id"} holding the address, {-1, lease holder}, {-2, 0} id never given out
# or stored already.
CREATE_RESERVED_ROUTE: Final = _guarded(
    _ADDRESS
    + """
local holder = redis.call('GET', KEYS[8])
if holder ~= ARGV[7] then return {-1, holder or ''} end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[6]) > last or redis.call('EXISTS', KEYS[7]) == 1 then return {-2, 0} end
local member = ARGV[2] .. ':' .. ARGV[6]
local owner = take_address(KEYS[6], ARGV[4], member, ARGV[5])
if owner then return {0, owner} end
redis.call('HSET', KEYS[7], 'ip', ARGV[3], 'port', ARGV[4], 'settings', ARGV[5],
           'version', 1)
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[5], member)
return {1, ARGV[6]}
"""
)

# KEYS: lease; ARGV: holder, ttl in ms, the holder it may replace ('' for none). Renews a
# lease this holder has, takes a free one, or one held by exactly the holder named (a dead
# earlier incarnation of the same node: cluster/identity.py), or leaves another holder's
# alone: {1, holder, 0} renewed, {2, holder, 0} acquired, {0, other holder, its remaining ms}.
ACQUIRE_LEASE: Final = _unguarded(
    """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, holder, 0}
end
if not holder or (ARGV[3] ~= '' and holder == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ARGV[1], 0}
end
return {0, holder, redis.call('PTTL', KEYS[1])}
"""
)

# KEYS: changes stream, applied stream, channel; ARGV: notice, entries kept (about).
# A change notice for the node serving an IP: the applied stream's last id (where the
# writer starts reading acknowledgements, so that none can come before it looks), then the
# notice added to the changes stream and published on the IP's channel, for whoever else
# listens there. {last applied id, subscribers of the channel}.
ANNOUNCE: Final = _unguarded(
    """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local since = '0-0'
if last[1] then since = last[1][1] end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
return {since, redis.call('PUBLISH', KEYS[3], ARGV[1])}
"""
)

# KEYS: lease; ARGV: holder. Deletes the lease only if this holder still has it.
RELEASE_LEASE: Final = _unguarded(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

# KEYS: nodes, node; ARGV: node id, record (JSON), ttl in ms.
PUT_NODE: Final = _unguarded(
    """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""
)

# KEYS: nodes; ARGV: prefix. The records of the live nodes; the ids of expired ones leave
# the set here, since nothing else would remove a node that was killed.
LIST_NODES: Final = _unguarded(
    """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. 'node:' .. id)
  if record then out[#out + 1] = record else redis.call('SREM', KEYS[1], id) end
end
return out
"""
)

# KEYS: epoch; ARGV: a new epoch id. The epoch stored after: the one given if there was none.
CLAIM_EPOCH: Final = _unguarded(
    """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""
)

# KEYS: apps, route_counter, app_routes, frontend_ips, ip_routes, ip_ports, route,
#       backend_counter, backends, epoch
# ARGV: prefix, app, id, ip, port, settings, route counter at least, backend counter at
#       least, epoch, the number of backends, then (backend id, ip, port, settings) for each
#       backend, then (name, settings) for each toxic, in their order.
# Writes a route with its ids as a node's snapshot has it (reseed), never over another
# one: {1, ''} written, {2, ''} stored already exactly so, {0, why} conflicting content
# (nothing written), {-1, epoch found} Redis holds another epoch (nothing written).
RESTORE_ROUTE: Final = _unguarded(
    _ADDRESS
    + """
local found = redis.call('GET', KEYS[10])
if found ~= ARGV[9] then return {-1, found or ''} end
local function at_least(key, value)
  if tonumber(redis.call('GET', key) or '0') < tonumber(value) then
    redis.call('SET', key, value)
  end
end
local member = ARGV[2] .. ':' .. ARGV[3]
local toxics, toxic_order = KEYS[7] .. ':toxics', KEYS[7] .. ':toxic_order'
local first_toxic = 11 + 4 * tonumber(ARGV[10])
local r = redis.call('HMGET', KEYS[7], 'ip', 'port', 'settings')
if r[1] then
  if r[1] ~= ARGV[4] or r[2] ~= ARGV[5] or r[3] ~= ARGV[6] then
    return {0, 'stored with another address or other settings'}
  end
  local count = 0
  for i = 11, first_toxic - 1, 4 do
    count = count + 1
    local b = redis.call('HMGET', KEYS[7] .. ':backend:' .. ARGV[i], 'ip', 'port', 'settings')
    if redis.call('SISMEMBER', KEYS[9], ARGV[i]) == 0 or b[1] ~= ARGV[i + 1]
        or b[2] ~= ARGV[i + 2] or b[3] ~= ARGV[i + 3] then
      return {0, 'stored with other backends'}
    end
  end
  if redis.call('SCARD', KEYS[9]) ~= count then return {0, 'stored with other backends'} end
  local names = redis.call('LRANGE', toxic_order, 0, -1)
  if #names * 2 ~= #ARGV - first_toxic + 1 then return {0, 'stored with other toxics'} end
  for j, name in ipairs(names) do
    local i = first_toxic + 2 * (j - 1)
    if name ~= ARGV[i] or redis.call('HGET', toxics, name) ~= ARGV[i + 1] then
      return {0, 'stored with other toxics'}
    end
  end
  at_least(KEYS[2], ARGV[7])
  at_least(KEYS[8], ARGV[8])
  return {2, ''}
end
local owner = take_address(KEYS[6], ARGV[5], member, ARGV[6])
if owner == SHARED then return {0, 'its address is shared by routes with server names'} end
if owner then return {0, 'its address is used by route ' .. owner} end
redis.call('HSET', KEYS[7], 'ip', ARGV[4], 'port', ARGV[5], 'settings', ARGV[6],
           'version', 1)
for i = 11, first_toxic - 1, 4 do
  redis.call('HSET', KEYS[7] .. ':backend:' .. ARGV[i], 'ip', ARGV[i + 1], 'port', ARGV[i + 2],
             'settings', ARGV[i + 3])
  redis.call('SADD', KEYS[9], ARGV[i])
end
for i = first_toxic, #ARGV, 2 do
  redis.call('HSET', toxics, ARGV[i], ARGV[i + 1])
  redis.call('RPUSH', toxic_order, ARGV[i])
end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SADD', KEYS[5], member)
at_least(KEYS[2], ARGV[7])
at_least(KEYS[8], ARGV[8])
return {1, ''}
"""
)

# KEYS: route, backends, backends_live, backends_dead; ARGV: live count, dead count, the
# live ids, the dead ids. Replaces both lists, keeping only ids of the route's backends;
# 0 (nothing written) if the route is gone.
PUT_HEALTH: Final = _guarded(
    """
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
)
