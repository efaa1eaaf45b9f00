"""Every key name the Redis store uses; docs/cluster.md is their reference (its tables are
read by tests/contract/test_redis.py and tests/cluster/test_keys.py). The Lua scripts build
a few names themselves (scripts.py); those must match the ones here."""

from __future__ import annotations

from urllib.parse import quote, unquote

from restcp.errors import Conflict


def app_segment(app: str) -> str:
    """An app id as it appears in keys: percent-encoded, so that no id can contain the ``:``
    that separates key parts. The API's app ids ([A-Za-z0-9._-]) come out unchanged."""
    return quote(app, safe="")


def describe_member(member: str) -> str:
    """``route 7 of app 'web'`` for the member ``web:7`` that an index holds."""
    app, _, route_id = member.rpartition(":")
    return f"route {route_id} of app {unquote(app)!r}"


def address_taken(frontend_ip: str, port: int, owner: str) -> Conflict:
    """The refusal of a route whose address the route ``owner`` (a member) holds, or
    routes with server names share (scripts._ADDRESS)."""
    if owner == "*sni":
        return Conflict(
            f"port {port} of {frontend_ip} is shared by routes with server names (sni): "
            "a route there must name its own"
        )
    return Conflict(f"port {port} of {frontend_ip} is already used by {describe_member(owner)}")


class Keys:
    """The key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.apps = f"{prefix}apps"
        self.frontend_ips = f"{prefix}frontend_ips"
        self.port_cursors = f"{prefix}port_cursors"
        self.tokens = f"{prefix}tokens"
        self.certificates = f"{prefix}certificates"
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

    def toxics(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:toxics"

    def toxic_order(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:toxic_order"

    def backends_live(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backends_live"

    def backends_dead(self, app: str, route_id: int) -> str:
        return f"{self.route(app, route_id)}:backends_dead"

    # Cluster coordination: short-lived, not part of the desired state.

    def lease(self, ip: str) -> str:
        return f"{self.prefix}lease:{ip}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_stats(self, node_id: str) -> str:
        """The node's counters of the routes it serves, for the other nodes' /stats."""
        return f"{self.prefix}stats:{node_id}"

    def changes(self, ip: str) -> str:
        """The stream of change notices for the node serving ``ip``."""
        return f"{self.prefix}changes:{ip}"

    def applied(self, ip: str) -> str:
        """The stream of that node's acknowledgements of the versions it applied."""
        return f"{self.prefix}applied:{ip}"

    def channel(self, name: str) -> str:
        """A pub/sub channel: pub/sub ignores database numbers, so the prefix is what keeps
        two clusters on one Redis apart."""
        return f"{self.prefix}{name}"
