"""Live changes under traffic: route and backend PATCHes while one client holds a connection
and a loop of new clients runs. The held connection keeps working through every change, and
no new client is refused."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from tests.e2e.conftest import create_route, wait_until
from tests.e2e.peers import (
    TAGGED_CHECK,
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    patch_backend,
    patch_route,
    served_by,
)
from tests.helpers import Node


class ClientLoop:
    """New clients one after another, in a thread, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                name = served_by(self.port, f"loop {i}")
            except Exception as err:  # refused, timed out: anything but an answer
                self.failures.append(f"client {i}: {err!r}")
                continue
            if name is None:
                self.failures.append(f"client {i}: closed by the proxy")
            else:
                self.served[name] += 1

    @property
    def count(self) -> int:
        return sum(self.served.values()) + len(self.failures)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_patches_under_traffic(node: Node) -> None:
    port = create_route(node, "live", balance="round_robin")["port"]
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(Backend(Tagged(name))) for name in "abc")
        attach(node, "live", 1, a.port)
        attach(node, "live", 1, b.port)
        held = Client(port)
        stack.callback(held.close)
        mine = held.ask("first")
        # The held client's backend, and the other one.
        own, other = (1, 2) if mine == "a" else (2, 1)
        ports = {"a": a.port, "b": b.port, "c": c.port}

        def route(**fields: Any) -> Callable[[], None]:
            def change() -> None:
                patch_route(node, "live", 1, **fields)

            return change

        def backend(backend_id: int, **fields: Any) -> Callable[[], None]:
            return lambda: patch_backend(node, "live", 1, backend_id, **fields)

        def all_up() -> None:
            for backend_id in (1, 2):
                wait_until(
                    lambda b=backend_id: backend_of(node, "live", 1, b)["health"] == "up",
                    "checks pass",
                )

        check = {"interval": 0.1, "timeout": 1, "rise": 1, "fall": 2, **TAGGED_CHECK}
        steps: list[tuple[str, Callable[[], None]]] = [
            ("balance least_conn", route(balance="least_conn")),
            ("balance source_hash", route(balance="source_hash")),
            ("balance two_choices", route(balance="two_choices")),
            ("timeouts", route(connect_timeout=1, idle_timeout=30, half_close_timeout=5)),
            ("health check on", route(health_check=check)),
            ("all up", all_up),
            ("limits", route(max_connections=1000, max_connect_attempts=2, passive_fall=5)),
            ("other weight 3", backend(other, weight=3)),
            ("own weight 0", backend(own, weight=0)),
            ("own weight 1", backend(own, weight=1)),
            ("own drain", backend(own, state="drain")),
            ("own enabled", backend(own, state="enabled")),
            ("other drain", backend(other, state="drain", drain_timeout=60)),
            ("other enabled", backend(other, state="enabled")),
            ("other moves to c", backend(other, port=ports["c"])),
            ("own moves to the freed port", backend(own, port=ports["b" if mine == "a" else "a"])),
            ("health check off", route(health_check=None)),
            ("balance random", route(balance="random")),
        ]
        with ClientLoop(port) as loop:
            for i, (what, change) in enumerate(steps):
                before = loop.count
                change()
                assert held.ask(f"after {what}") == mine, what
                # A few new clients under the new settings before the next change.
                wait_until(lambda n=before: loop.count >= n + 3, f"clients after {what}")
                assert not loop.failures, (what, loop.failures)
                print(f"{i:2} {what}: ok")
        print(f"{loop.count} new clients, by backend: {dict(loop.served)}")
        assert not loop.failures, loop.failures
        assert held.ask("at the end") == mine
        # The moves took effect: new clients reach c, and the held backend's own server
        # kept exactly its one connection open throughout. It counts against the address
        # it is connected to, which its backend had before it moved (issue #18).
        assert loop.served["c"] > 0
        moved = backend_of(node, "live", 1, own)
        assert moved["active_connections"] == 0
        assert moved["replaced"] == [
            {"ip": "127.0.0.1", "port": ports[mine], "active_connections": 1}
        ]
