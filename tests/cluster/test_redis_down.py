"""Part 4: Redis going away is not an outage. Routes relay on as last configured, writes
answer 503, /healthz says degraded; when Redis is back the node reconnects and resyncs."""

from __future__ import annotations

import socket
from collections.abc import Callable

import redis

from tests.cluster.conftest import (
    PinnedRedisServer,
    StartNode,
    attach,
    count_lines,
    create,
    fetch,
    poll,
    wait_lines,
)
from tests.e2e.peers import Backend, echo, recv_exactly

C = "127.0.0.3"


def test_routes_relay_on_while_redis_is_down_and_the_node_resyncs_when_it_is_back(
    start_node: StartNode,
    banner: Callable[[bytes], Backend],
    redis_server: PinnedRedisServer,
    raw_redis: redis.Redis,
) -> None:
    c = start_node(C, "--resync-interval", "0.5", "--lease-ttl", "1")
    route = create(c, "web")
    with Backend(echo) as backend:
        attach(c, "web", route["id"], backend.port)
        with socket.create_connection((C, route["port"]), timeout=5) as client:
            client.sendall(b"before")
            assert recv_exactly(client, 6) == b"before"
            # Persisted, so that the server that comes back has the routes (an empty Redis
            # is an empty desired state: docs/cluster.md).
            raw_redis.save()
            redis_server.kill()

            # Traffic keeps flowing on the open connection, and new ones are relayed.
            for i in range(50):
                message = f"during {i}".encode()
                client.sendall(message)
                assert recv_exactly(client, len(message)) == message
            with socket.create_connection((C, route["port"]), timeout=5) as other:
                other.sendall(b"new")
                assert recv_exactly(other, 3) == b"new"

            poll(
                lambda: c.call("GET", "/healthz").json()["status"] == "degraded",
                "healthz says degraded",
            )
            health = c.call("GET", "/healthz")
            assert health.status == 200, health
            assert health.json()["cluster"]["redis"] == "unreachable"
            refused = c.call(
                "PUT", f"/apps/web/routes/{route['id']}/backends", {"ip": "127.0.0.1", "port": 1}
            )
            assert refused.status == 503, refused
            # Through several resync ticks and reconnection attempts, still relaying.
            wait_lines(c, "resync failed", 3)
            client.sendall(b"still")
            assert recv_exactly(client, 5) == b"still"

            backs = count_lines(c, "Redis is back: resynced")
            redis_server.start()
            wait_lines(c, "Redis is back: resynced", backs + 1, deadline=10.0)
            poll(lambda: c.call("GET", "/healthz").json()["status"] == "ok", "healthz ok")
            client.sendall(b"after")
            assert recv_exactly(client, 5) == b"after"

    # Writes work again, and are applied.
    two = banner(b"two")
    other_route = create(c, "web")
    attach(c, "web", other_route["id"], two.port)
    assert fetch(C, other_route["port"]) == b"two"
    assert "Traceback" not in "\n".join(c.lines)
