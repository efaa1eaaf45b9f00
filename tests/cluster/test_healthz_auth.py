"""/healthz is open to load-balancer probes, and with tokens on tells them nothing of the
cluster: no node id, frontend IPs, leases or Redis errors (which name Redis's address)."""

from __future__ import annotations

from tests.cluster.conftest import StartNode
from tests.e2e.test_auth import ADMIN, bearer

C = "127.0.0.3"


def test_healthz_shows_the_cluster_to_the_admin_only(start_node: StartNode) -> None:
    node = start_node(C, "--api-token", ADMIN)
    token = node.call("POST", "/apps/web/tokens", headers=bearer(ADMIN))
    assert token.status == 201, token
    admin = node.call("GET", "/healthz", headers=bearer(ADMIN))
    assert admin.status == 200, admin
    cluster = admin.json()["cluster"]
    assert cluster["frontend_ips"][C]["lease"] == "held", cluster
    assert cluster["redis"] == "ok", cluster
    for headers in ({}, bearer(token.json()["token"]), bearer("not-a-token-at-all-0123")):
        anyone = node.call("GET", "/healthz", headers=headers)
        assert anyone.status == 200, anyone
        assert anyone.json() == {"status": "ok", "routes": 0}, anyone.json()
        assert C.encode() not in anyone.body
