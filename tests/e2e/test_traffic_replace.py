"""A backend replaced while connections to it are open (``POST .../backends/{id}``): the
open connections stay with the address they reached, and count against that address, not
the new one, until they end. The API lists them under the backend's ``replaced``; the new
address's ``active_connections``, its ``max_connections`` and ``least_conn`` see only its
own connections (issue #18). On both data planes: the native engine's records name the
address a connection reached when its backend has it no longer."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest

from tests.e2e.conftest import create_route, wait_until
from tests.e2e.peers import Backend, Client, Tagged, attach, backend_of, served_by
from tests.helpers import Node


def replace(node: Node, app: str, backend: int, port: int, **fields: Any) -> None:
    body = {"ip": "127.0.0.1", "port": port, **fields}
    response = node.call("POST", f"/apps/{app}/routes/1/backends/{backend}", body)
    assert response.status == 200, response


def leftovers(port: int, count: int) -> list[dict[str, Any]]:
    return [{"ip": "127.0.0.1", "port": port, "active_connections": count}]


@pytest.fixture(params=["asyncio", "native"])
def any_node(request: pytest.FixtureRequest) -> Node:
    """A node on each data plane (``native``: its routes served by the engine)."""
    node: Node = request.getfixturevalue(
        "engine_node" if request.param == "native" else "asyncio_node"
    )
    return node


def test_max_connections_counts_the_new_address_alone(any_node: Node) -> None:
    node = any_node
    port = create_route(node, "mx")["port"]
    with ExitStack() as stack:
        a = stack.enter_context(Backend(Tagged("a")))
        b = stack.enter_context(Backend(Tagged("b")))
        attach(node, "mx", 1, a.port, max_connections=1)
        on_a = stack.enter_context(Client(port))
        assert on_a.ask("first") == "a"
        assert served_by(port) is None, "a takes one connection"

        replace(node, "mx", 1, b.port, max_connections=1)
        # b has its own one place: the connection to a is not one of b's.
        on_b = stack.enter_context(Client(port))
        assert on_b.ask("second") == "b"
        status = backend_of(node, "mx", 1, 1)
        assert status["active_connections"] == 1
        assert status["replaced"] == leftovers(a.port, 1)
        assert served_by(port) is None, "b takes one connection"
        assert on_a.ask("still here") == "a"

        # The leftover's end frees nothing of b's, and is no longer listed.
        on_a.close()
        wait_until(lambda: backend_of(node, "mx", 1, 1)["replaced"] == [], "a's last ends")
        assert backend_of(node, "mx", 1, 1)["active_connections"] == 1
        assert served_by(port) is None, "b is still full"
        on_b.close()
        wait_until(lambda: backend_of(node, "mx", 1, 1)["active_connections"] == 0, "b free")
        assert served_by(port) == "b"


def test_least_conn_weighs_the_new_address_alone(any_node: Node) -> None:
    node = any_node
    port = create_route(node, "lc", balance="least_conn")["port"]
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(Backend(Tagged(name))) for name in "abc")
        attach(node, "lc", 1, a.port)
        held = [stack.enter_context(Client(port)) for _ in range(3)]
        assert [client.ask("x") for client in held] == ["a"] * 3
        attach(node, "lc", 1, c.port)

        replace(node, "lc", 1, b.port)
        # Backend 1 (now b) and backend 2 (c) both have no connection: one new client
        # each. Counted against backend 1, a's three would send both to c.
        fresh = [stack.enter_context(Client(port)) for _ in range(2)]
        assert Counter(client.ask("y") for client in fresh) == {"b": 1, "c": 1}
        status = backend_of(node, "lc", 1, 1)
        assert status["active_connections"] == 1
        assert status["replaced"] == leftovers(a.port, 3)
        assert [client.ask("z") for client in held] == ["a"] * 3

        for client in held:
            client.close()
        wait_until(lambda: backend_of(node, "lc", 1, 1)["replaced"] == [], "a's last ends")


def test_replacing_back_takes_the_leftovers_back(any_node: Node) -> None:
    node = any_node
    """Replaced by b and then by a again: the connections still open to a are a's again."""
    port = create_route(node, "back")["port"]
    with ExitStack() as stack:
        a = stack.enter_context(Backend(Tagged("a")))
        b = stack.enter_context(Backend(Tagged("b")))
        attach(node, "back", 1, a.port, max_connections=2)
        held = [stack.enter_context(Client(port)) for _ in range(2)]
        assert [client.ask("x") for client in held] == ["a"] * 2
        replace(node, "back", 1, b.port, max_connections=2)
        assert backend_of(node, "back", 1, 1)["replaced"] == leftovers(a.port, 2)
        replace(node, "back", 1, a.port, max_connections=2)
        status = backend_of(node, "back", 1, 1)
        assert (status["active_connections"], status["replaced"]) == (2, [])
        assert served_by(port) is None, "a is full again"
