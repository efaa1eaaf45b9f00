"""Admin states through a real node: drain keeps open connections and takes no new ones
(closing them at drain_timeout if one is set); disabled closes them at once and stops the
probes."""

from __future__ import annotations

import time
from collections import Counter

from tests.e2e.conftest import create_route, wait_until
from tests.e2e.peers import (
    TAGGED_CHECK,
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    elapsed_since,
    health_is,
    patch_backend,
    served_by,
)
from tests.helpers import Node

INTERVAL = 0.2


def hold(port: int, n: int, opened: list[Client]) -> dict[str, list[Client]]:
    """``n`` open clients, by the backend that answered each; each is added to ``opened``
    as well, for the test to close."""
    by: dict[str, list[Client]] = {}
    for _ in range(n):
        client = Client(port)
        opened.append(client)
        by.setdefault(client.ask("hello"), []).append(client)
    return by


def test_drain_and_disable(node: Node) -> None:
    check = {"interval": INTERVAL, "timeout": 1, "rise": 1, "fall": 3, **TAGGED_CHECK}
    port = create_route(node, "dr", balance="round_robin", health_check=check)["port"]
    ta, tb = Tagged("a"), Tagged("b")
    opened: list[Client] = []
    with Backend(ta) as a, Backend(tb) as b:
        try:
            attach(node, "dr", 1, a.port)
            attach(node, "dr", 1, b.port)
            for backend in (1, 2):
                wait_until(health_is(node, "dr", 1, backend, "up"), "checks pass")
            held = hold(port, 4, opened)
            assert {k: len(v) for k, v in held.items()} == {"a": 2, "b": 2}

            # Drain without a deadline: what is open keeps flowing both ways, nothing new.
            patch_backend(node, "dr", 1, 1, state="drain")
            probes = ta.probes
            for client in held["a"]:
                assert client.ask("still there") == "a"
            assert Counter(served_by(port) for _ in range(10)) == {"b": 10}
            assert backend_of(node, "dr", 1, 1)["active_connections"] == 2
            # A draining backend is still checked: its health stays known.
            wait_until(lambda: ta.probes >= probes + 3, "probes of a draining backend")
            for client in held["a"]:
                assert client.ask("and still") == "a"

            # Back in rotation, then drained with a deadline: open ones are closed at it.
            patch_backend(node, "dr", 1, 1, state="enabled")
            assert Counter(served_by(port) for _ in range(4)) == {"a": 2, "b": 2}
            deadline = 0.5
            patch_backend(node, "dr", 1, 1, state="drain", drain_timeout=deadline)
            started = time.monotonic()
            for client in held["a"]:
                assert client.ask("before the deadline") == "a"
            for client in held["a"]:
                assert client.closed()
            closed_after = elapsed_since(started)
            print(f"drain_timeout {deadline}s: closed after {closed_after:.3f}s")
            assert deadline - 0.1 <= closed_after < deadline + 0.5
            wait_until(
                lambda: backend_of(node, "dr", 1, 1)["active_connections"] == 0, "a released"
            )
            for client in held["b"]:
                assert client.ask("unaffected") == "b"

            # Disabled: closed at once, and no more probes.
            patch_backend(node, "dr", 1, 2, state="disabled")
            started = time.monotonic()
            for client in held["b"]:
                assert client.closed()
            closed_after = elapsed_since(started)
            print(f"disabled: closed after {closed_after:.3f}s")
            assert closed_after < 0.3
            # A probe already under way may still land: let it, then count.
            time.sleep(INTERVAL * 1.5)
            b_probes, a_probes = tb.probes, ta.probes
            time.sleep(INTERVAL * 5)
            print(f"over {INTERVAL * 5:.1f}s: a probed {ta.probes - a_probes}x, b 0x")
            assert tb.probes == b_probes
            assert ta.probes >= a_probes + 3  # the checks do run meanwhile
        finally:
            for client in opened:
                client.close()


def test_drain_timeout_set_while_draining(node: Node) -> None:
    """A deadline given to a backend already draining counts from when it entered drain."""
    port = create_route(node, "late", balance="round_robin")["port"]
    opened: list[Client] = []
    with Backend(Tagged("a")) as a, Backend(Tagged("b")) as b:
        try:
            attach(node, "late", 1, a.port)
            attach(node, "late", 1, b.port)
            held = hold(port, 2, opened)
            patch_backend(node, "late", 1, 1, state="drain")
            drained = time.monotonic()
            assert held["a"][0].ask("open") == "a"
            patch_backend(node, "late", 1, 1, drain_timeout=0.6)
            assert held["a"][0].closed()
            closed_after = elapsed_since(drained)
            print(f"deadline set while draining: closed {closed_after:.3f}s after drain")
            assert 0.5 <= closed_after < 1.2
            # A deadline already past when it is set closes them at once.
            patch_backend(node, "late", 1, 1, state="enabled", drain_timeout=None)
            held = hold(port, 4, opened)
            assert {k: len(v) for k, v in held.items()} == {"a": 2, "b": 2}
            patch_backend(node, "late", 1, 1, state="drain")
            time.sleep(0.3)
            started = time.monotonic()
            patch_backend(node, "late", 1, 1, drain_timeout=0.1)
            for client in held["a"]:
                assert client.closed()
            assert elapsed_since(started) < 0.3
            assert held["b"][0].ask("unaffected") == "b"
        finally:
            for client in opened:
                client.close()
