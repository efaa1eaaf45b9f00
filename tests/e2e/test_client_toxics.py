"""restcp.Client and restcp.AsyncClient on a route's toxics, against a real `restcp serve`:
every toxic endpoint, the toxic() and down() helpers undoing their change at the end of the
block, exception or not, and refusals as their exceptions. Each scenario runs with both
clients (tests/flavours.py), reading answers with unknown fields forbidden."""

from __future__ import annotations

import pytest

from restcp.api.schemas import ToxicOut
from restcp.client import Conflict, Invalid, NotFound
from tests.e2e.conftest import assert_clean_log
from tests.flavours import FLAVOURS, Flavour, run
from tests.helpers import Node


@FLAVOURS
def test_toxics_through_every_endpoint(flavour: Flavour, node: Node) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            route = await c(client.routes("web").create())
            toxics = route.toxics
            assert await c(toxics.list()) == []

            slow = await c(toxics.add("latency", latency=200, stream="upstream"))
            assert (slow.name, slow.route) == ("latency_upstream", route)
            assert slow.info == ToxicOut(
                name="latency_upstream",
                type="latency",
                stream="upstream",
                toxicity=1.0,
                attributes={"jitter": 0, "latency": 200},
                clients=[],
            )
            # The client's model is the API's own, field for field.
            raw = node.call("GET", "/apps/web/routes/1/toxics/latency_upstream").json()
            assert slow.info == ToxicOut.model_validate(raw)
            cut = await c(
                toxics.add(
                    "reset_peer", name="cut", toxicity=0.5, clients=["10.0.0.0/8"], timeout=10
                )
            )
            assert (cut.info.stream, cut.info.attributes, cut.info.clients) == (
                "downstream",
                {"timeout": 10},
                ["10.0.0.0/8"],
            )

            listed = await c(toxics.list())
            assert [t.name for t in listed] == ["latency_upstream", "cut"]
            assert [t.info for t in listed] == [slow.info, cut.info]
            assert (await c(toxics.get("cut"))).info == cut.info
            assert [t.name for t in (await c(route.refresh())).info.toxics] == [
                "latency_upstream",
                "cut",
            ]

            # Attributes merge; toxicity and clients replace; the handle reads the answer.
            same = await c(slow.update(jitter=20))
            assert same is slow
            assert slow.info.attributes == {"jitter": 20, "latency": 200}
            changed = await c(toxics.update("cut", toxicity=1, clients=[]))
            assert (changed.info.toxicity, changed.info.clients) == (1.0, [])
            handle = toxics["cut"]
            assert handle.info is None
            assert (await c(handle.refresh())).info == changed.info

            await c(toxics.remove("latency_upstream"))
            await c(cut.remove())
            assert await c(toxics.list()) == []
            with pytest.raises(NotFound):
                await c(toxics.get("cut"))

            # The route's own switches, read back.
            down = await c(route.update(enabled=False, seed=7))
            assert (down.info.enabled, down.info.seed) == (False, 7)

    run(scenario)
    assert_clean_log(node)


@FLAVOURS
def test_toxic_refusals_are_their_exceptions_and_change_nothing(
    flavour: Flavour, node: Node
) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            route = await c(client.routes("web").create())
            await c(route.toxics.add("latency", name="slow"))
            with pytest.raises(Invalid) as invalid:
                await c(route.toxics.add("bandwidth", rate=0))
            assert (invalid.value.status, [e.field for e in invalid.value.errors]) == (
                422,
                ["attributes.rate"],
            )
            with pytest.raises(Invalid) as unknown:
                await c(route.toxics.update("slow", rate=5))
            assert [e.field for e in unknown.value.errors] == ["attributes.rate"]
            with pytest.raises(Conflict) as taken:
                await c(route.toxics.add("latency", name="slow", latency=1))
            assert "has a toxic named 'slow' already" in taken.value.detail
            with pytest.raises(NotFound):
                await c(route.toxics.remove("nope"))
            with pytest.raises(NotFound):
                await c(route.toxics["nope"].update(latency=1))
            with pytest.raises(NotFound):
                await c(client.routes("web")[9].toxics.list())
            (only,) = await c(route.toxics.list())
            assert only.info.attributes == {"jitter": 0, "latency": 0}

    run(scenario)
    assert_clean_log(node)


@FLAVOURS
def test_toxic_and_down_undo_their_change_on_exit_even_after_an_error(
    flavour: Flavour, node: Node
) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            route = await c(client.routes("web").create())
            await c(route.toxics.add("timeout", name="kept"))

            async with c.hold(route.toxic("latency", latency=200, stream="upstream")) as held:
                assert (held.name, held.info.attributes["latency"]) == ("latency_upstream", 200)
                names = [t.name for t in await c(route.toxics.list())]
                assert names == ["kept", "latency_upstream"]
            assert [t.name for t in await c(route.toxics.list())] == ["kept"]

            async def fail_while_poisoned() -> None:
                async with c.hold(route.toxic("reset_peer", name="cut", toxicity=0.5)):
                    assert len(await c(route.toxics.list())) == 2
                    raise RuntimeError("inside")

            with pytest.raises(RuntimeError, match="inside"):
                await fail_while_poisoned()
            assert [t.name for t in await c(route.toxics.list())] == ["kept"]

            # A toxic that cannot be is refused on entry, and the block never runs.
            with pytest.raises(Invalid):
                async with c.hold(route.toxic("bandwidth")):
                    raise AssertionError("entered")

            async with c.hold(route.down()) as down:
                assert down is route
                assert down.info.enabled is False
                assert (await c(route.refresh())).info.enabled is False
            assert (await c(route.refresh())).info.enabled is True

            async def fail_while_down() -> None:
                async with c.hold(route.down()):
                    raise RuntimeError("down")

            with pytest.raises(RuntimeError, match="down"):
                await fail_while_down()
            assert (await c(route.refresh())).info.enabled is True
            # Undone to what it was: a route down already stays down.
            await c(route.update(enabled=False))
            async with c.hold(route.down()):
                pass
            assert (await c(route.refresh())).info.enabled is False

            # Removed in the block, or its route deleted: nothing is left to undo.
            async with c.hold(route.toxic("slicer", average_size=10)) as sliced:
                await c(sliced.remove())
            async with c.hold(route.toxic("latency")), c.hold(route.down()):
                await c(route.delete())
            with pytest.raises(NotFound):
                await c(route.refresh())

    run(scenario)
    assert_clean_log(node)
