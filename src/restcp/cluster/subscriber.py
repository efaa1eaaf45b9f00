"""The pub/sub listener: the node holding an IP subscribes to ``provision:<ip>`` and serves
each provisioning request that comes there (``run``). Its subscription is also how other
nodes see that the IP is served (``leases.require_server``).

Change notices travel on a stream per IP (changes.py), which loses nothing; the same notice
published on the channel is for other listeners. Pub/sub keeps nothing for a subscriber that
is away, so a node resyncs everything after every (re)subscription, besides its
--resync-interval timer: whatever it missed while away is applied then. Redis down is not an
outage: the listeners live in memory and keep relaying, and this module reconnects with
backoff and resyncs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination, Subscription
from restcp.cluster.epoch import Epoch
from restcp.cluster.health import HealthWriter
from restcp.cluster.leases import Leases
from restcp.cluster.messages import (
    PROVISION,
    Malformed,
    ProvisionRequest,
    decode_notice,
    provision_channel,
)
from restcp.cluster.provisioning import Provisioner
from restcp.errors import RestcpError, Unavailable
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")

# Reconnecting to Redis: first wait, doubling up to the last one.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
# How long the listener waits for a message before it looks up: to see whether the IPs it
# should listen to changed, and to ping a silent connection.
POLL = 0.1
# The most messages handled as one batch (each route synced once per batch).
BATCH = 1000


class Subscriber:
    """Keeps one subscription to the ``provision:<ip>`` channels of the IPs this node holds,
    a new one whenever they change or the connection is lost, and dispatches what arrives.
    Owns whether Redis is reachable for /healthz (``connected``, ``problem``)."""

    def __init__(
        self,
        bus: Coordination,
        settings: Settings,
        node: Controller,
        leases: Leases,
        epoch: Epoch,
        health: HealthWriter,
        provisioner: Provisioner,
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._node = node
        self._leases = leases
        self._epoch = epoch
        self._health = health
        self._provisioner = provisioner
        self.connected = False
        self.problem: str | None = None
        # The subscription start made, which run() takes over.
        self._first: Subscription | None = None

    def started(self, subscription: Subscription | None, problem: str | None = None) -> None:
        """What start found: its subscription, or (None) why Redis could not be reached."""
        self._first = subscription
        self.connected, self.problem = subscription is not None, problem

    # -- listening -------------------------------------------------------------------------

    def _wanted(self) -> frozenset[str]:
        return frozenset(provision_channel(ip) for ip in self._leases.held)

    async def subscribe(self) -> Subscription:
        subscription = self._bus.subscription()
        channels = self._wanted()
        try:
            await subscription.subscribe(channels)
        except BaseException:
            await subscription.close()
            raise
        log.info("subscribed to %s", ", ".join(sorted(channels)) or "nothing (no lease held)")
        return subscription

    async def run(self) -> None:
        """Listen for ever: resubscribe when the IPs held change, reconnect (with backoff)
        when the connection is lost, and resync after each new subscription."""
        subscription, self._first = self._first, None
        backoff = BACKOFF_MIN
        while True:
            try:
                if subscription is None:
                    # Leases first (a provisional one is confirmed or given up), then the
                    # epoch: the node follows Redis only once both say it may.
                    await self._leases.claim()
                    await self._epoch.check()
                    subscription = await self.subscribe()
                    # What was published while nobody listened is gone: read it all, and
                    # write the health Redis may have lost.
                    self._health.forget()
                    await self._leases.follow(self._node.resync)
                    if not self.connected:
                        log.info("Redis is back: resynced")
                    self.connected, self.problem = True, None
                backoff = BACKOFF_MIN
                await self._listen(subscription)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not isinstance(err, RestcpError):
                    log.exception("bug: the cluster listener failed")
                if self.connected:
                    log.warning("lost Redis pub/sub (%s): reconnecting", err)
                    # Redis went away (restarted, failed over): the pool's idle
                    # connections went with it; new ones are made as commands need them.
                    await self._bus.drop_idle_connections()
                self.connected, self.problem = False, str(err)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(2 * backoff, BACKOFF_MAX)
            finally:
                if subscription is not None:
                    await subscription.close()
                    subscription = None

    async def _listen(self, subscription: Subscription) -> None:
        """Handle messages until the IPs to listen to change (returns) or the connection
        is lost (raises Unavailable)."""
        # A connection can die without a word (a partition): a silent one is pinged, and a
        # silence longer than a few pings is a dead connection.
        ping_every = min(5.0, max(0.5, self._settings.lease_ttl / 3))
        pinged = time.monotonic()
        while subscription.channels == self._wanted():
            if not subscription.channels:
                await asyncio.sleep(POLL)
                continue
            got = await subscription.get(POLL)
            if got is None:
                now = time.monotonic()
                if now - subscription.last_heard > 3 * ping_every:
                    raise Unavailable(f"Redis did not answer pings for {3 * ping_every:g}s")
                if now - subscription.last_heard > ping_every and now - pinged > ping_every:
                    pinged = now
                    await subscription.ping()
                continue
            batch = [got]
            while len(batch) < BATCH and (more := await subscription.get(0)) is not None:
                batch.append(more)
            await self._handle(batch)

    async def _handle(self, batch: list[tuple[str, str]]) -> None:
        # Requests, in order. A change notice here is the one announced on the IP's stream
        # too (changes.py), which is what this node applies: it is here for other listeners.
        for channel, data in batch:
            ip = channel.removeprefix(PROVISION)
            if ip not in self._leases.held:
                continue
            try:
                notice = decode_notice(data)
            except Malformed as err:
                log.warning("ignoring a message on %s: %s: %r", channel, err, data[:200])
                continue
            if isinstance(notice, ProvisionRequest):
                await self._provisioner.serve(ip, notice)
