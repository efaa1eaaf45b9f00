"""Every write through any node answers once the node serving the route has applied it
(docs/cluster.md, "Every write through any node"): a client connecting right after the
answer sees the change; 202 when the serving node is too slow, 503 with nothing stored when
no live node serves the route's IP; a notice the serving node could not read at once is read
when it can, not lost."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import redis

from tests.cluster.conftest import StartNode, attach, create, fetch, poll, ready, replace
from tests.e2e.peers import Backend
from tests.helpers import Response

A, C = "127.0.0.2", "127.0.0.3"
CLIENTS = 30


def right_after(write: Callable[[], Response], ip: str, port: int) -> list[bytes | None]:
    """What CLIENTS clients get who connect to ``ip:port`` together, the moment ``write``
    has answered (they are started and waiting before it is sent)."""
    go = threading.Event()
    got: list[bytes | None] = [None] * CLIENTS

    def client(i: int) -> None:
        go.wait()
        got[i] = fetch(ip, port)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        answer = write()
        assert 200 <= answer.status < 300, answer
    finally:
        go.set()
        for thread in threads:
            thread.join()
    return got


def test_thirty_clients_right_after_each_write_through_another_node_all_see_it(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    # The experiment: every write through A, for a route C serves; the resync
    # timer (30 s) cannot help.
    a, _ = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    port, path = route["port"], f"/apps/web/routes/{route['id']}"
    one, two = banner(b"one"), banner(b"two")

    def write(method: str, where: str, body: object = None) -> Callable[[], Response]:
        return lambda: a.call(method, path + where, body)

    added = write("PUT", "/backends", {"ip": "127.0.0.1", "port": one.port})
    assert right_after(added, C, port) == [b"one"] * CLIENTS
    replaced = write("POST", "/backends/1", {"ip": "127.0.0.1", "port": two.port})
    assert right_after(replaced, C, port) == [b"two"] * CLIENTS
    # No backend left to use: a client is closed at once.
    disabled = write("PATCH", "/backends/1", {"state": "disabled"})
    assert right_after(disabled, C, port) == [b""] * CLIENTS
    assert right_after(write("DELETE", ""), C, port) == [None] * CLIENTS


def test_a_change_for_an_ip_no_live_node_serves_is_503_and_stores_nothing(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    path = f"/apps/web/routes/{route['id']}"
    attach(a, "web", route["id"], banner(b"one").port)
    before = a.call("GET", path).json()
    c_id = c.call("GET", "/healthz").json()["cluster"]["node"]
    c.stop(signal.SIGKILL)  # its lease lives on for up to 10 s: it is not waited for
    writes = [
        ("PUT", path + "/backends", {"ip": "127.0.0.1", "port": banner(b"two").port}),
        ("POST", path + "/backends/1", {"ip": "127.0.0.1", "port": 9}),
        ("PATCH", path + "/backends/1", {"weight": 7}),
        ("DELETE", path + "/backends/1", None),
        ("PATCH", path, {"balance": "round_robin"}),
        ("DELETE", path, None),
    ]
    for method, where, body in writes:
        answer = a.call(method, where, body)
        assert answer.status == 503, answer
        assert answer.json()["detail"] == (
            f"no live node serves frontend_ip {C} (its node {c_id} is away); nothing was stored"
        )
    assert a.call("GET", path).json() == before


def test_a_change_the_serving_node_is_too_slow_for_is_202_then_applied_when_it_can(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.5", ready=False), start_node(C, ready=False)
    )
    route = create(a, "web", frontend_ip=C)
    path = f"/apps/web/routes/{route['id']}"
    one = banner(b"one")
    c.proc.send_signal(signal.SIGSTOP)
    try:
        added = a.call("PUT", path + "/backends", {"ip": "127.0.0.1", "port": one.port})
        assert added.status == 202, added
        assert added.json() == {"id": 1, "status": "provisioning"}
        assert added.headers["Location"] == path + "/backends/1"
        patched = a.call("PATCH", path, {"balance": "round_robin"})
        assert patched.status == 202, patched
        assert patched.json()["balance"] == "round_robin"
        assert patched.json()["status"] == "provisioning"
        # Stored: every node reads it.
        assert [b["port"] for b in a.call("GET", path).json()["backends"]] == [one.port]
    finally:
        c.proc.send_signal(signal.SIGCONT)
    poll(lambda: fetch(C, route["port"]) == b"one", "C applies it once it runs again")
    # And a write now answers once applied, as ever.
    deleted = a.call("DELETE", path + "/backends/1")
    assert deleted.status == 204, deleted
    assert fetch(C, route["port"]) == b""


def test_a_notice_the_serving_node_could_not_read_at_once_is_read_later_not_lost(
    start_node: StartNode, banner: Callable[[bytes], Backend], raw_redis: redis.Redis
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    path = f"/apps/web/routes/{route['id']}/backends"
    one = banner(b"one")
    # C is paused, and the connection its notices come by is cut meanwhile: a notice sent
    # now reaches nobody at once. Pub/sub would lose it; the stream keeps it.
    c.proc.send_signal(signal.SIGSTOP)
    readers = [cl["id"] for cl in raw_redis.client_list() if cl["cmd"] == "xread"]
    assert len(readers) == 2  # A's and C's, each reading its IP's notices
    for reader in readers:
        raw_redis.client_kill_filter(_id=reader)
    answers: list[int] = []
    writer = threading.Thread(
        target=lambda: answers.append(
            a.call("PUT", path, {"ip": "127.0.0.1", "port": one.port}).status
        )
    )
    writer.start()
    poll(lambda: raw_redis.xlen(f"c1:changes:{C}") > 0, "the notice is in C's stream")
    c.proc.send_signal(signal.SIGCONT)
    writer.join()
    # C read it where it had left off, applied it and said so, within the write's wait.
    assert answers == [201]
    assert fetch(C, route["port"]) == b"one"
    # Pub/sub cut too: the same.
    raw_redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    poll(lambda: raw_redis.pubsub_numsub(f"c1:provision:{C}")[0][1] == 1, "C listens again")
    replace(a, "web", route["id"], 1, banner(b"two").port)
    assert fetch(C, route["port"]) == b"two"


def test_a_write_while_the_serving_node_listens_again_waits_for_it_instead_of_503(
    start_node: StartNode, banner: Callable[[bytes], Backend], raw_redis: redis.Redis
) -> None:
    # C's pub/sub connection is cut while C is paused, so it cannot listen again at once:
    # for a moment nobody listens on its channel, though C holds its lease and lives.
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    one = banner(b"one")
    c.proc.send_signal(signal.SIGSTOP)
    try:
        raw_redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert raw_redis.pubsub_numsub(f"c1:provision:{C}")[0][1] == 0
        asked = _numsub_calls(raw_redis)
        answers: list[Response] = []
        body = {"ip": "127.0.0.1", "port": one.port}
        path = f"/apps/web/routes/{route['id']}/backends"
        writer = threading.Thread(target=lambda: answers.append(a.call("PUT", path, body)))
        writer.start()
        # A is looking for a listener, again and again (or has answered already).
        poll(
            lambda: bool(answers) or _numsub_calls(raw_redis) >= asked + 2,
            "A waits for C to listen",
        )
    finally:
        c.proc.send_signal(signal.SIGCONT)
    writer.join()
    assert [answer.status for answer in answers] == [201], answers
    assert fetch(C, route["port"]) == b"one"


def _numsub_calls(raw_redis: redis.Redis) -> int:
    stats = raw_redis.info("commandstats")
    return int(stats.get("cmdstat_pubsub|numsub", stats.get("cmdstat_pubsub", {})).get("calls", 0))
