"""A restarted node serves every stored route on its old port, with its backends, before it
says it is ready; a port someone else holds meanwhile shows in /healthz until it is freed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    StartNode,
    add_backend,
    free_port_outside,
    serve_args,
    snapshot,
    wait_until,
)
from tests.e2e.peers import Backend, echo, held_port, round_trip
from tests.helpers import free_port_range


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_routes_survive_restart(tmp_path: Path, start_node: StartNode, sig: int) -> None:
    lo, hi = free_port_range()
    asked = free_port_outside(lo, hi)
    args = serve_args(tmp_path / "restcp.db", lo, hi)
    first = start_node(*args)
    with Backend(echo) as one, Backend(echo) as two:
        web = "/apps/web/routes"
        assert first.call("PUT", web).json()["port"] == lo
        assert first.call("PUT", "/apps/db/routes").json()["port"] == lo + 1
        assert first.call("PUT", web, {"port": asked, "balance": "round_robin"}).status == 201
        for port in (one.port, 9, two.port):
            add_backend(first, "web", 1, port)
        assert first.call("DELETE", f"{web}/1/backends/2").status == 204
        add_backend(first, "web", 2, two.port)
        # Deleted before the restart: its port must stay unused until the range wraps.
        assert first.call("DELETE", "/apps/db/routes/1").status == 204
        before = snapshot(first)

        code = first.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

        second = start_node(*args)
        assert " routes=2" in second.wait_for_line(" ready api="), "every route bound before ready"
        # Right after the ready line, with no retry: both routes relay to their backends.
        assert round_trip(lo, b"first route\n") == b"first route\n"
        assert round_trip(asked, b"second route\n") == b"second route\n"
        health = second.call("GET", "/healthz")
        assert health.status == 200
        assert (health.json()["status"], health.json()["routes"]) == ("ok", 2)
        assert health.json()["unbound"] == []
        assert snapshot(second) == before
        assert one.accepted + two.accepted == 2

        # Counters survived too: ids are not reused, nor is the freed port lo + 1.
        route = second.call("PUT", web).json()
        assert (route["id"], route["port"]) == (3, lo + 2)
        backend = second.call("PUT", f"{web}/1/backends", {"ip": "127.0.0.1", "port": 9})
        assert backend.json() == {"id": 4}
        assert second.call("PUT", "/apps/db/routes").json()["id"] == 2
        assert second.stop() == 0


def test_healthz_reports_a_held_port_until_the_resync_binds_it(
    tmp_path: Path, start_node: StartNode
) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--resync-interval", "0.2")
    first = start_node(*args)
    with Backend(echo) as backend:
        for app in ("held", "free"):
            assert first.call("PUT", f"/apps/{app}/routes").status == 201
            add_backend(first, app, 1, backend.port)
        first.kill()

        with held_port(lo):
            second = start_node(*args)
            health = second.call("GET", "/healthz")
            assert health.status == 503
            body = health.json()
            assert body["status"] != "ok"
            assert [(u["app"], u["route"]) for u in body["unbound"]] == [("held", 1)]
            assert body["unbound"][0]["error"]
            # The other route is served meanwhile, and the held one is still stored.
            assert round_trip(lo + 1, b"served\n") == b"served\n"
            assert second.call("GET", "/apps/held/routes/1").json()["port"] == lo
            assert second.call("PUT", "/apps/other/routes", {"port": lo}).status == 409

        wait_until(lambda: second.call("GET", "/healthz").status == 200, "healthz 200")
        health = second.call("GET", "/healthz")
        assert (health.json()["routes"], health.json()["unbound"]) == (2, [])
        assert round_trip(lo, b"bound at last\n") == b"bound at last\n"
        errors = [line for line in second.lines if "cannot bind" in line]
        assert len(errors) == 1, "one report per failure, not one per resync"
        assert second.stop() == 0
