"""Remote provisioning, both ends: a route for an IP this node does not hold is bound by the
IP's holder, since only it can bind that address (docs/cluster.md, "Creating a route for
another node's IP").

The asking node reserves the route id, subscribes to ``provision-success:<app>:<route>``,
publishes a ProvisionRequest on ``provision:<ip>`` and waits for the holder's Reply: the
port it bound and stored, or a RemoteError. This request-and-answer over pub/sub is the
shape #17's acknowledgements of applied changes will take too.
"""

from __future__ import annotations

import contextlib
import logging

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination, SharedStore
from restcp.cluster.messages import (
    Malformed,
    Provisioned,
    ProvisionRequest,
    Refused,
    RemoteError,
    Reply,
    decode_reply,
    provision_channel,
    reply_channel,
)
from restcp.errors import NotFound, Provisioning, RestcpError, Unavailable
from restcp.model import Route, RouteSettings, format_host
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")


class Provisioner:
    """Asks the holder of an IP to bind a route (``provision``), and binds the routes other
    nodes ask this one for (``serve``)."""

    def __init__(
        self,
        bus: Coordination,
        store: SharedStore,
        settings: Settings,
        node: Controller,
        node_id: str,
    ) -> None:
        self._bus = bus
        self._store = store
        self._settings = settings
        self._node = node
        self._node_id = node_id

    async def provision(
        self, app: str, ip: str, port: int | None, settings: RouteSettings
    ) -> Route:
        """Have the node that serves ``ip`` bind and store a new route; wait for its port."""
        channel = provision_channel(ip)
        if await self._bus.subscribers(channel) == 0:
            holder = (await self._bus.lease_holders([ip])).get(ip)
            why = "no node holds its lease" if holder is None else f"its node {holder[0]} is away"
            raise Unavailable(f"no live node serves frontend_ip {ip} ({why}); nothing was stored")
        route_id = await self._bus.reserve_route_id(app)
        request = ProvisionRequest(app, route_id, port, settings, self._node_id)
        receivers, text = await self._bus.request(
            channel,
            request.encode(),
            reply_channel((app, route_id)),
            self._settings.provision_timeout,
        )
        if receivers == 0:
            raise Unavailable(
                f"the node serving frontend_ip {ip} went away; nothing was stored "
                f"(route id {route_id} stays unused)"
            )
        reply: Reply | None = None
        if text is not None:
            try:
                reply = decode_reply(text)
            except Malformed as err:
                log.warning("provisioning route %d of %r: %s: %r", route_id, app, err, text[:200])
        if reply is None:
            # No answer in time, or the answer was lost: the store says whether it happened.
            with contextlib.suppress(NotFound, Unavailable):
                return await self._store.get_route(app, route_id)
            raise Provisioning(app, route_id, ip)
        if isinstance(reply, Refused):
            raise reply.error.exception()
        return Route(app, route_id, ip, reply.port, settings)

    async def serve(self, ip: str, request: ProvisionRequest) -> None:
        """Bind and store the route another node asked for on ``ip``, and answer."""
        app, route_id = request.app, request.route_id
        reply: Reply
        try:
            route = await self._node.create_route(
                app, ip, request.port, request.settings, route_id=route_id
            )
            reply = Provisioned(route.port)
            log.info(
                "route %d of app %r provisioned on %s:%d for node %s",
                route_id,
                app,
                format_host(ip),
                route.port,
                request.sender,
            )
        except RestcpError as err:
            reply = Refused(RemoteError.of(err))
            log.info("route %d of app %r not provisioned: %s", route_id, app, err)
        except Exception as err:
            log.exception("bug: provisioning route %d of app %r failed", route_id, app)
            reply = Refused(RemoteError.of(err))
        try:
            await self._bus.publish(reply_channel((app, route_id)), reply.encode())
        except Unavailable as err:
            # The requester then looks the route up in the store.
            log.warning("cannot answer the provisioning of route %d of %r: %s", route_id, app, err)

    async def store_route(
        self, app: str, route_id: int, ip: str, port: int, settings: RouteSettings
    ) -> Route:
        """Store a route this node has bound for another node's request."""
        return await self._bus.create_reserved_route(
            app, route_id, ip, port, settings, self._node_id
        )
