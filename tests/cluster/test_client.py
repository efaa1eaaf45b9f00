"""The client's cluster endpoints against real nodes on a real Redis: GET /nodes, a cluster
node's /healthz, POST /cluster/adopt and /cluster/reseed, a route no live node can serve
(Unavailable), one handed to a node too slow to answer (Provisioning, then waited for), and
changes that node is too slow to apply (NotYetApplied). Each scenario runs with both
clients (tests/flavours.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from restcp.client import NotYetApplied, Provisioning, Unavailable
from tests.cluster.conftest import StartNode, fetch, poll, ready
from tests.e2e.peers import Backend
from tests.flavours import FLAVOURS, Flavour, run

A, C = "127.0.0.2", "127.0.0.3"


@FLAVOURS
def test_nodes_health_adopt_and_reseed(flavour: Flavour, start_node: StartNode) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    f = flavour

    async def scenario() -> None:
        async with f.open(a.api) as client:
            nodes = await f(client.nodes())
            assert sorted(n.api for n in nodes) == sorted([a.api + "/", c.api + "/"])
            assert sorted(ip for n in nodes for ip in n.frontend_ips) == [A, C]
            health = await f(client.healthz())
            assert health.status == "ok"
            assert health.cluster is not None
            assert health.cluster["frontend_ips"][A]["lease"] == "held"

            route = await f(client.routes("web").create(frontend_ip=C))
            assert (route.host, route.info.frontend_ip) == (C, C)
            adopted = await f(client.adopt())
            assert adopted.epoch == health.cluster["epoch"]
            assert adopted.routes == 0  # A serves none: the route is C's
            reseeded = await f(client.reseed())
            assert (reseeded.epoch, reseeded.written, reseeded.conflicts) == (adopted.epoch, [], [])

            with pytest.raises(Unavailable) as nobody:
                await f(client.routes("web").create(frontend_ip="127.0.0.9"))
            assert nobody.value.status == 503
            assert "no live node serves frontend_ip 127.0.0.9" in nobody.value.detail

    run(scenario)


@FLAVOURS
def test_a_route_being_provisioned_is_raised_and_can_be_waited_for(
    flavour: Flavour, start_node: StartNode
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    f = flavour

    async def scenario() -> None:
        async with f.open(a.api) as client:
            # Stopped, C is subscribed still (Redis counts it as a receiver) but answers
            # nothing.
            c.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(Provisioning) as provisioning:
                    await f(client.routes("web").create(frontend_ip=C))
                pending = provisioning.value
                assert (pending.status, pending.app, pending.route_id) == (202, "web", 1)
                assert pending.frontend_ip == C
                assert pending.route.info is None
                with pytest.raises(Unavailable, match=r"not served within 0\.3s"):
                    await f(pending.route.wait(timeout=0.3))
            finally:
                c.proc.send_signal(signal.SIGCONT)
            route = await f(pending.route.wait())
            assert route is pending.route
            assert (route.id, route.host) == (1, C)
            assert fetch(C, route.port) == b""

    run(scenario)


@FLAVOURS
def test_changes_the_serving_node_is_too_slow_for_are_raised_with_what_they_return(
    flavour: Flavour, start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    f = flavour
    one, two = banner(b"one"), banner(b"two")

    async def scenario() -> None:
        async with f.open(a.api) as client:
            route = await f(client.routes("web").create(frontend_ip=C))
            first = await f(route.backends.add("127.0.0.1", one.port))
            assert fetch(C, route.port) == b"one"
            c.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(NotYetApplied) as updated:
                    await f(route.update(balance="round_robin"))
                assert updated.value.status == 202
                assert updated.value.result is route
                assert route.info.balance == "round_robin"

                with pytest.raises(NotYetApplied) as added:
                    await f(route.backends.add("127.0.0.1", two.port, weight=3))
                second = added.value.result
                assert (second.id, second.info.port, second.info.weight) == (2, two.port, 3)

                # A held change not applied: the block does not run, and it is undone.
                with pytest.raises(NotYetApplied) as held:
                    async with f.hold(first.disabled()):
                        raise AssertionError("the block runs")
                assert held.value.result is first
                assert (await f(first.refresh())).info.state == "enabled"

                with pytest.raises(NotYetApplied) as deleted:
                    await f(first.delete())
                assert deleted.value.result is None
            finally:
                c.proc.send_signal(signal.SIGCONT)
            # Stored, and applied once C runs again without anyone asking: only the second
            # backend is left.
            poll(lambda: fetch(C, route.port) == b"two", "C relays to the second backend")
            assert [b.id for b in await f(route.backends.list())] == [2]
            # Applied at once again: the call returns.
            assert await f(route.delete()) is None
            assert fetch(C, route.port) is None

    run(scenario)
