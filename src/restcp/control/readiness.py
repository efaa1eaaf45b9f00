"""What ``/healthz`` says of a node: ready once started with every route it should serve
bound; with workers, which of them serve; in a cluster, its leases and Redis's state."""

from __future__ import annotations

from typing import Any

from restcp.control.placement import Placement
from restcp.dataplane import DataPlane
from restcp.workers import Workers


def readiness(
    started: bool, plane: DataPlane, workers: Workers, placement: Placement
) -> tuple[bool, dict[str, Any]]:
    """(ready, details)."""
    unbound = [
        {"app": app, "route": route_id, "error": error}
        for (app, route_id), error in plane.proxy.unbound.items()
    ]
    details: dict[str, Any] = {"routes": len(plane.running()), "unbound": unbound}
    # A worker being restarted leaves the others serving: informative, not unready.
    details.update(workers.readiness())
    # In a cluster, its "status" (degraded, standby) replaces the API's ok/starting, and a
    # node waiting for a lease is not ready.
    placed, cluster = placement.readiness()
    details.update(cluster)
    return started and not unbound and placed, details
