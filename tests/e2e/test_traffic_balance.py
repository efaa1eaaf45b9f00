"""Balancing through the real proxy: weighted round robin, least connections, source
hashing by client address, and weight 0."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

from tests.e2e.conftest import create_route, wait_until
from tests.e2e.peers import (
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    patch_backend,
    served_by,
)
from tests.helpers import Node


def test_weighted_round_robin(node: Node) -> None:
    port = create_route(node, "rr", balance="round_robin")["port"]
    with Backend(Tagged("a")) as a, Backend(Tagged("b")) as b:
        attach(node, "rr", 1, a.port, weight=3)
        attach(node, "rr", 1, b.port, weight=1)
        order = [served_by(port) for _ in range(40)]
        print("3:1 over 40:", dict(Counter(order)), "".join(n or "-" for n in order[:12]))
        assert Counter(order) == {"a": 30, "b": 10}
        # Interleaved, not in runs: b's turn comes once in every four clients.
        for i in range(0, 40, 4):
            assert sorted(order[i : i + 4]) == ["a", "a", "a", "b"], order
        assert (a.accepted, b.accepted) == (30, 10)

        # Weight 0: no new client, while an open one on it keeps working.
        with Client(port) as on_a:
            while on_a.ask("which") != "a":
                pass
            patch_backend(node, "rr", 1, 1, weight=0)
            assert Counter(served_by(port) for _ in range(12)) == {"b": 12}
            assert on_a.ask("still open") == "a"


def test_least_conn_follows_held_connections(node: Node) -> None:
    port = create_route(node, "lc", balance="least_conn")["port"]
    with ExitStack() as stack:
        a = stack.enter_context(Backend(Tagged("a")))
        b = stack.enter_context(Backend(Tagged("b")))
        attach(node, "lc", 1, a.port)
        attach(node, "lc", 1, b.port)

        # Four held on b alone (a takes no new client while draining), then a is back.
        patch_backend(node, "lc", 1, 1, state="drain")
        on_b = [stack.enter_context(Client(port)) for _ in range(4)]
        assert [c.ask("x") for c in on_b] == ["b"] * 4
        patch_backend(node, "lc", 1, 1, state="enabled")

        # Each new (held) client goes to the backend with fewer open connections.
        on_a = [stack.enter_context(Client(port)) for _ in range(4)]
        assert [c.ask("x") for c in on_a] == ["a"] * 4, "a had fewer every time"
        # 4:4 now. Close three on a: the next three go to a again.
        for client in on_a[:3]:
            client.close()
        wait_until(lambda: backend_of(node, "lc", 1, 1)["active_connections"] == 1, "a down to one")
        more = [stack.enter_context(Client(port)) for _ in range(3)]
        assert [c.ask("x") for c in more] == ["a"] * 3
        assert backend_of(node, "lc", 1, 1)["active_connections"] == 4
        assert backend_of(node, "lc", 1, 2)["active_connections"] == 4


def test_source_hash_pins_each_client_address(node: Node) -> None:
    port = create_route(node, "sh", balance="source_hash")["port"]
    sources = [f"127.0.0.{i}" for i in range(1, 21)]
    with Backend(Tagged("a")) as a, Backend(Tagged("b")) as b, Backend(Tagged("c")) as c:
        for server in (a, b, c):
            attach(node, "sh", 1, server.port)
        pinned: dict[str, str | None] = {}
        for source in sources:
            seen = {served_by(port, source=source) for _ in range(5)}
            assert len(seen) == 1, (source, seen)
            pinned[source] = seen.pop()
        spread = Counter(pinned.values())
        print("source_hash, 20 addresses over 3 backends:", dict(spread))
        # The hash is deterministic: this split is the same on every run.
        assert len(spread) == 3, spread

        # Taking c out moves only c's clients; everyone else stays where they were.
        patch_backend(node, "sh", 1, 3, weight=0)
        for source in sources:
            now = served_by(port, source=source)
            if pinned[source] == "c":
                assert now in ("a", "b"), source
            else:
                assert now == pinned[source], source
        # And back in: every client returns to its old backend.
        patch_backend(node, "sh", 1, 3, weight=1)
        assert {s: served_by(port, source=s) for s in sources} == pinned
