"""Change notices that are never lost, and the acknowledgement a write waits for: both ends.

A write through a node that does not serve the route's frontend IP answers only once the
node serving it has applied it (docs/cluster.md, "Every write through any node")::

    writing node                                    serving node (holds lease:<ip>)
      store the write: the route's version is v       XREAD changes:<ip> from its last id
      ANNOUNCE: last id of applied:<ip>,    ──────►   apply each route named, from the store
                XADD changes:<ip> <app>:<route>,      XADD applied:<ip> <app>:<route> <w>
                PUBLISH provision:<ip> (as ever)      (w: the version it applied; or gone)
      XREAD applied:<ip> from that id       ◄──────
      until <app>:<route> with w >= v (or gone): the answer; none within
      --provision-timeout: 202, the change is stored and will be applied

A stream keeps its entries for whoever reads later, so a notice is read after a lost
connection, a Redis restart (with persistence) or a pause, from the last id the serving node
read. A node that takes over an IP (after a start, or from a dead node) reads its notices
from --provision-timeout ago, after its full resync: the writes still waiting for someone to
apply them get their acknowledgement from it. The ``provision:<ip>`` channel carries the
same notice, for anyone else who listens there; the serving node reads the stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination
from restcp.cluster.leases import Leases
from restcp.cluster.messages import Applied, Changed, Malformed, provision_channel
from restcp.errors import RestcpError, Unavailable
from restcp.model import Route, RouteKey
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")

# The longest one XREAD blocks: the serving node looks at the IPs it holds this often, and
# a read never outlasts the connection's socket timeout.
READ_BLOCK = 0.5
# Reading again after a failure: first wait, doubling up to the last one.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class Changes:
    """``announce``: tell the node serving a route's IP that it changed, and wait for it to
    apply it. ``run``: as that node, apply what is announced for the IPs held, and say so."""

    def __init__(
        self, bus: Coordination, settings: Settings, node: Controller, leases: Leases
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._node = node
        self._leases = leases

    # -- the writing node --------------------------------------------------------------------

    async def announce(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        """Announce the stored change of ``key`` (``route``: as stored after it, None:
        deleted) to the node serving ``ip``; whether that node applied it (this version or
        a later one) within --provision-timeout. Never raises: the change is stored, and the
        serving node applies it at the latest at its next resync."""
        notice = Changed(key).encode()
        version = None if route is None else route.version
        try:
            since, _ = await self._bus.announce(ip, notice, provision_channel(ip))
        except Unavailable as err:
            log.warning(
                "change of route %s not announced (%s): its node applies it within "
                "--resync-interval of Redis being back",
                notice,
                err,
            )
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.provision_timeout
        try:
            while (left := deadline - loop.time()) > 0:
                for entry_id, text in await self._bus.read_applied(
                    ip, since, min(left, READ_BLOCK)
                ):
                    since = entry_id
                    try:
                        applied = Applied.decode(text)
                    except Malformed as err:
                        log.warning("ignoring an acknowledgement of %s: %s: %r", ip, err, text)
                        continue
                    if applied.key == key and applied.covers(version):
                        return True
        except Unavailable as err:
            log.warning("no acknowledgement of route %s (%s): answering 202", notice, err)
        return False

    # -- the serving node ----------------------------------------------------------------------

    async def run(self) -> None:
        """Apply the changes announced for the IPs this node holds, for ever; acknowledge
        each. A notice is read again until it was applied: a failure (Redis away) moves no
        position."""
        positions: dict[str, str] = {}
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._follow_leases(positions)
                if not positions:
                    await asyncio.sleep(READ_BLOCK)
                    continue
                found = await self._bus.read_changes(dict(positions), READ_BLOCK)
                if found:
                    await self._apply(found, positions)
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not isinstance(err, RestcpError):
                    log.exception("bug: applying announced changes failed")
                else:
                    # Redis away: the subscriber reports it; this reads on where it was.
                    log.debug("announced changes not read now (%s): trying again", err)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(2 * backoff, BACKOFF_MAX)

    async def _follow_leases(self, positions: dict[str, str]) -> None:
        held = set(self._leases.held)
        for ip in [ip for ip in positions if ip not in held]:
            del positions[ip]
        for ip in sorted(held - positions.keys()):
            # A new lease: what was announced for the IP lately may be waiting for whoever
            # serves it. The full resync after the lease covers what came before.
            positions[ip] = await self._bus.stream_start(self._settings.provision_timeout)

    async def _apply(self, found: list[tuple[str, str, str]], positions: dict[str, str]) -> None:
        # Each route once per batch, read after all of its notices were written.
        keys: dict[RouteKey, str] = {}
        for ip, _, text in found:
            try:
                keys.setdefault(Changed.decode(text).key, ip)
            except Malformed as err:
                log.warning("ignoring a change notice of %s: %s: %r", ip, err, text[:200])
        acks: dict[str, list[str]] = defaultdict(list)
        for key, ip in keys.items():
            route = await self._node.sync(key)
            # Only the node serving the IP may say a change is live there.
            if ip in self._leases.held:
                acks[ip].append(Applied(key, None if route is None else route.version).encode())
        for ip, texts in acks.items():
            await self._bus.acknowledge(ip, texts)
        for ip, entry_id, _ in found:
            if ip in positions:
                positions[ip] = entry_id
