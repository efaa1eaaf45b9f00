"""Part 1: a write through any node's API reaches the node serving the route at once (by
pub/sub), and a lost message within one --resync-interval (by the resync)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from tests.cluster.conftest import (
    StartNode,
    attach,
    count_lines,
    create,
    fetch,
    poll,
    ready,
    replace,
    wait_lines,
)
from tests.e2e.peers import Backend

A, C = "127.0.0.2", "127.0.0.3"


def test_a_backend_added_through_one_node_is_used_by_the_owner_at_once(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(c, "web")
    assert route["frontend_ip"] == C
    port = route["port"]
    assert fetch(C, port) == b"", "no backend yet: accepted, then closed"

    one = banner(b"one")
    began = time.monotonic()
    attach(a, "web", route["id"], one.port)
    answered = time.monotonic() - began
    # The resync timer is 30 s: anything much faster than that came by the notice A sent.
    took = poll(lambda: fetch(C, port) == b"one", "C relays to the new backend")
    assert answered + took < 5.0, (answered, took)
    # A applied nothing itself: it serves none of C's routes.
    assert a.call("GET", "/healthz").json()["routes"] == 0

    # Every kind of write travels the same way: replace, then delete the route.
    two = banner(b"two")
    replace(a, "web", route["id"], 1, two.port)
    poll(lambda: fetch(C, port) == b"two", "C relays to the replaced backend")
    assert a.call("DELETE", f"/apps/web/routes/{route['id']}").status == 204
    poll(lambda: fetch(C, port) is None, "C closed the deleted route's port")
    assert "Traceback" not in "\n".join(a.lines + c.lines)


def test_after_its_pubsub_connection_is_killed_a_node_converges_within_a_resync_interval(
    start_node: StartNode, banner: Callable[[bytes], Backend], raw_redis: redis.Redis
) -> None:
    c, a = ready(start_node(C, "--resync-interval", "0.5", ready=False), start_node(A, ready=False))
    route = create(c, "web")
    one, two = banner(b"one"), banner(b"two")
    attach(a, "web", route["id"], one.port)
    poll(lambda: fetch(C, route["port"]) == b"one", "C relays to backend one")

    subscribed = count_lines(c, "subscribed to provision:127.0.0.3")
    # Both nodes' listeners go; a change made now may be announced to nobody.
    assert raw_redis.client_kill_filter(_type="pubsub") >= 2
    began = time.monotonic()
    replace(a, "web", route["id"], 1, two.port)
    took = poll(lambda: fetch(C, route["port"]) == b"two", "C relays to backend two")
    # One resync interval, plus the slack of a loaded test machine.
    assert time.monotonic() - began < 0.5 + 2.0, took
    wait_lines(c, "subscribed to provision:127.0.0.3", subscribed + 1)
    assert count_lines(c, "lost Redis pub/sub") >= 1

    # And the notices flow again on the new subscription.
    replace(a, "web", route["id"], 1, one.port)
    poll(lambda: fetch(C, route["port"]) == b"one", "C relays to backend one again")


def test_a_change_nobody_announces_is_applied_by_the_resync_timer(
    start_node: StartNode, banner: Callable[[bytes], Backend], raw_redis: redis.Redis
) -> None:
    c = start_node(C, "--resync-interval", "0.5")
    route = create(c, "web")
    one = banner(b"one")
    # Written straight into Redis, the way a node that crashed before publishing leaves it.
    key = f"c1:route:web:{route['id']}"
    raw_redis.incr(f"{key}:backend_counter")
    raw_redis.hset(
        f"{key}:backend:1",
        mapping={"ip": "127.0.0.1", "port": one.port, "settings": "{}"},
    )
    raw_redis.sadd(f"{key}:backends", 1)
    began = time.monotonic()
    poll(lambda: fetch(C, route["port"]) == b"one", "C relays to the silent backend")
    assert time.monotonic() - began < 0.5 + 2.0


def test_a_listener_of_an_ips_channel_hears_every_change_made_through_another_node(
    start_node: StartNode, banner: Callable[[bytes], Backend], raw_redis: redis.Redis
) -> None:
    # The seed's notice, `<app>:<route>` on provision:<ip>, for anyone who listens, though
    # the serving node reads its notices from the stream now.
    a, _ = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    path = f"/apps/web/routes/{route['id']}"
    with raw_redis.pubsub() as listener:
        listener.subscribe(f"c1:provision:{C}")
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        backend = attach(a, "web", route["id"], banner(b"one").port)
        assert a.call("PATCH", path, {"balance": "round_robin"}).status == 200
        assert a.call("DELETE", f"{path}/backends/{backend}").status == 204
        assert a.call("DELETE", path).status == 204
        heard = [listener.get_message(timeout=5) for _ in range(4)]
    assert [m["data"] for m in heard if m] == [f"web:{route['id']}"] * 4
