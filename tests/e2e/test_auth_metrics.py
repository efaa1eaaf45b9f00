"""The metrics token: what a Prometheus scraper holds. It reaches GET /metrics and nothing
else, so a leaked scrape config cannot change a route."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.conftest import StartNode, serve_args, snapshot, wait_until
from tests.e2e.test_auth import ADMIN, bearer
from tests.helpers import Node, free_port_range

METRICS = "scrape-Tok3n-for-prometheus"
ROTATED = "scrape-token-after-rotation"


def start(start_node: StartNode, tmp_path: Path) -> tuple[Node, Path]:
    lo, hi = free_port_range()
    path = tmp_path / "metrics-token"
    path.write_text(METRICS + "\n")
    args = serve_args(tmp_path / "m.db", lo, hi, "--api-token", ADMIN)
    return start_node(*args, "--metrics-token-file", str(path)), path


def scrape(node: Node, token: str | None) -> int:
    headers = {} if token is None else bearer(token)
    response = node.call("GET", "/metrics", headers=headers)
    if response.status == 200:
        assert b"restcp_connections_total" in response.body or b"process_" in response.body
    return response.status


def test_the_metrics_token_scrapes_and_does_nothing_else(
    start_node: StartNode, tmp_path: Path
) -> None:
    node, _ = start(start_node, tmp_path)
    assert node.call("PUT", "/apps/web/routes", headers=bearer(ADMIN)).status == 201
    app_token = node.call("POST", "/apps/web/tokens", headers=bearer(ADMIN)).json()["token"]
    assert scrape(node, METRICS) == 200
    assert scrape(node, ADMIN) == 200
    assert scrape(node, None) == 401
    assert scrape(node, app_token) == 403
    before = snapshot_as_admin(node)
    for method, path, body in [
        ("GET", "/apps", None),
        ("GET", "/apps/web/routes", None),
        ("PUT", "/apps/web/routes", {}),
        ("DELETE", "/apps/web/routes/1", None),
        ("PUT", "/apps/web/routes/1/backends", {"ip": "127.0.0.1", "port": 9}),
        ("POST", "/apps/web/tokens", None),
        ("GET", "/nodes", None),
    ]:
        response = node.call(method, path, body, headers=bearer(METRICS))
        assert response.status == 403, (method, path, response)
        assert "GET /metrics only" in response.json()["detail"]
    assert snapshot_as_admin(node) == before
    # /healthz is open, and the scraper sees what anyone sees.
    anyone = node.call("GET", "/healthz").json()
    assert node.call("GET", "/healthz", headers=bearer(METRICS)).json() == anyone


def test_sighup_rotates_the_metrics_token(start_node: StartNode, tmp_path: Path) -> None:
    node, path = start(start_node, tmp_path)
    path.write_text(ROTATED + "\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("reloaded routes=" in line for line in node.lines), "the reload")
    assert any("metrics token read again" in line for line in node.lines), node.lines
    assert scrape(node, METRICS) == 401
    assert scrape(node, ROTATED) == 200
    assert scrape(node, ADMIN) == 200


def snapshot_as_admin(node: Node) -> dict[str, object]:
    class AsAdmin:
        def call(self, method: str, path: str, body: object = None) -> object:
            return node.call(method, path, body, headers=bearer(ADMIN))

    return snapshot(AsAdmin())  # type: ignore[arg-type]
