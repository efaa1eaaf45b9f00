"""``restcp status``: this node at a glance: its health (GET /healthz), the routes it serves
with their backends up and down, and the connections open now.

In a cluster the API lists every node's routes; the node's own are those on the frontend
IPs it holds (``cluster.frontend_ips`` of its /healthz), so status shows those only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from restcp.cli.base import Session, api_command
from restcp.cli.output import fields, table
from restcp.cli.resources import health_counts

if TYPE_CHECKING:
    from restcp.api.schemas import HealthOut, RouteOut
    from restcp.client import Client

# The leases of a cluster node's frontend IPs under which it serves their routes.
SERVING_LEASES = ("held", "provisional")


def every_route(client: Client) -> list[RouteOut]:
    """Every route of every app, with its backends' health and load."""
    found: list[RouteOut] = []
    for app in client.apps():
        if app.routes:
            found.extend(r.info for r in client.routes(app.app).list() if r.info is not None)
    return found


def served_here(health: HealthOut, routes: list[RouteOut]) -> list[RouteOut]:
    """The routes this node serves: all of them, or in a cluster those of its IPs."""
    if health.cluster is None:
        return routes
    ips = {
        ip
        for ip, lease in health.cluster.get("frontend_ips", {}).items()
        if isinstance(lease, dict) and lease.get("lease") in SERVING_LEASES
    }
    return [route for route in routes if route.frontend_ip in ips]


def summary(url: str, health: HealthOut, routes: list[RouteOut]) -> dict[str, Any]:
    """status's answer, JSON-ready."""
    rows = []
    totals = {"up": 0, "down": 0, "unknown": 0}
    for route in routes:
        counts = health_counts(route)
        for state, count in counts.items():
            totals[state] += count
        rows.append({
            "app": route.app,
            "id": route.id,
            "url": route.url,
            "backends": len(route.backends),
            **counts,
            "connections": sum(backend.active_connections for backend in route.backends),
        })  # fmt: skip
    return {
        "url": url,
        "health": health.model_dump(mode="json"),
        "backends": totals,
        "connections": sum(row["connections"] for row in rows),
        "routes": rows,
    }


def register(root: click.Group) -> None:
    @api_command(
        root,
        "status",
        help="This node at a glance: its health, the routes it serves, their backends up "
        "and down, and the connections open now.",
        short_help="this node: health, routes, backends up and down, connections",
    )
    def status(session: Session) -> None:
        health = session.client.healthz()
        routes = served_here(health, every_route(session.client))
        data = summary(session.client.url, health, routes)
        backends = data["backends"]
        head = fields([
            ("node", data["url"]),
            ("status", health.status),
            ("routes", f"{health.routes} served, {len(health.unbound)} unbound"),
            ("backends", f"{backends['up']} up, {backends['down']} down, "
                         f"{backends['unknown']} unknown"),
            ("connections", data["connections"]),
        ])  # fmt: skip
        parts = [head]
        if data["routes"]:
            columns = ("APP", "ROUTE", "URL", "BACKENDS", "UP", "DOWN", "UNKNOWN", "CONNECTIONS")
            keys = ("app", "id", "url", "backends", "up", "down", "unknown", "connections")
            parts.append(table(columns, [[row[k] for k in keys] for row in data["routes"]]))
        if health.unbound:
            parts.append(
                table(
                    ("APP", "ROUTE", "ERROR"),
                    [(u.app, u.route, u.error) for u in health.unbound],
                    "unbound",
                )
            )
        if health.workers:
            parts.append(
                table(
                    ("WORKER", "PID", "SERVING"),
                    [(w.worker, w.pid, w.serving) for w in health.workers],
                    "workers",
                )
            )
        session.show(data, *parts)
