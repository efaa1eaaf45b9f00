"""control.routes: a route's toxics are written as its backends are: stored, read back,
applied (the route served carries them), announced to the node serving it if another one;
a failed write applies nothing.
The harness is test_routes.py's."""

from __future__ import annotations

import asyncio

import pytest

from restcp.core.toxics import ToxicError, attributes
from restcp.errors import Conflict, DuplicateToxic, NotFound, NotYetApplied, Unavailable
from restcp.model import Toxic
from tests.unit.control.test_routes import Harness, run

SLOW = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 200)))
CUT = Toxic("cut", "reset_peer", "upstream", attributes=(("timeout", 0),))


def test_a_toxic_is_stored_then_applied_with_its_route() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        h.reset()
        assert await h.routes.add_toxic(route.key, SLOW) == SLOW
        assert h.events("store.add_toxic", "store.get_route", "plane.", "workers.", "ann") == [
            "store.add_toxic",
            "store.get_route",  # read back
            "plane.apply",
            "workers.route",
            "workers.settle",
        ]  # served here: told to nobody
        (applied,) = next(arg for name, arg in h.journal if name == "plane.apply")
        assert applied.toxics == (SLOW,)
        assert h.plane.running()[route.key].toxics == (SLOW,)

        h.reset()
        await h.routes.add_toxic(route.key, CUT)
        await h.routes.delete_toxic(route.key, "slow")
        assert h.events("store.add_toxic", "store.delete_toxic", "plane.") == [
            "store.add_toxic", "plane.apply", "store.delete_toxic", "plane.apply",
        ]  # fmt: skip
        assert h.plane.running()[route.key].toxics == (CUT,)

    run(scenario)


def test_a_toxic_of_a_route_another_node_serves_is_announced_and_waited_for() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.remote_route()
        h.reset()
        await h.routes.add_toxic(route.key, SLOW)
        await h.routes.update_toxic(route.key, "slow", lambda t: t.replace(toxicity=0.5))
        await h.routes.delete_toxic(route.key, "slow")
        writes = ("store.add_toxic", "store.update_toxic", "store.delete_toxic")
        assert h.events(*writes, "require", "announce") == [
            "require", "store.add_toxic", "announce",
            "require", "store.update_toxic", "announce",
            "require", "store.delete_toxic", "announce",
        ]  # fmt: skip
        (_, (announced, locked)) = h.journal[-1]
        assert announced is not None
        assert announced.toxics == ()
        assert not locked

        # Not acknowledged in time: stored, and NotYetApplied carries the toxic (a 202).
        h.elsewhere.acked = False
        with pytest.raises(NotYetApplied) as pending:
            await h.routes.add_toxic(route.key, CUT)
        assert pending.value.result == CUT
        assert (await h.real_store.get_route(*route.key)).toxics == (CUT,)

        # No live node serves it: nothing stored.
        h.elsewhere.away = True
        with pytest.raises(Unavailable, match="nothing was stored"):
            await h.routes.add_toxic(route.key, SLOW)
        with pytest.raises(Unavailable, match="nothing was stored"):
            await h.routes.delete_toxic(route.key, "cut")
        assert (await h.real_store.get_route(*route.key)).toxics == (CUT,)

    run(scenario)


def test_an_update_edits_the_toxic_as_stored_in_its_place() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        await h.routes.add_toxic(route.key, SLOW)
        await h.routes.add_toxic(route.key, CUT)
        h.reset()

        def merge(toxic: Toxic) -> Toxic:
            merged = attributes(toxic.type, {"jitter": 5}, dict(toxic.attributes))
            return toxic.replace(attributes=merged)

        changed = await h.routes.update_toxic(route.key, "slow", merge)
        assert changed == SLOW.replace(attributes=(("jitter", 5), ("latency", 200)))
        assert h.events("store.", "plane.") == [
            "store.get_route", "store.update_toxic", "store.get_route", "plane.apply"
        ]  # fmt: skip
        assert h.plane.running()[route.key].toxics == (changed, CUT)

    run(scenario)


def test_concurrent_edits_of_one_toxic_lose_neither() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        await h.routes.add_toxic(route.key, SLOW)
        await asyncio.gather(
            h.routes.update_toxic(route.key, "slow", lambda t: t.replace(toxicity=0.5)),
            h.routes.update_toxic(route.key, "slow", lambda t: t.replace(clients=("::1/128",))),
        )
        stored = (await h.real_store.get_route(*route.key)).toxic("slow")
        assert stored is not None
        assert (stored.toxicity, stored.clients) == (0.5, ("::1/128",))

    run(scenario)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("type", {"type": "timeout", "attributes": (("timeout", 0),)}),
        ("stream", {"stream": "upstream"}),
    ],
)
def test_a_toxics_type_and_stream_cannot_change(field: str, change: dict[str, object]) -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        await h.routes.add_toxic(route.key, SLOW)
        h.reset()
        with pytest.raises(ToxicError) as err:
            await h.routes.update_toxic(route.key, "slow", lambda t: t.replace(**change))
        assert err.value.field == field
        assert "store.update_toxic" not in h.events("store.")
        assert h.events("plane.", "workers.", "announce") == []
        assert (await h.real_store.get_route(*route.key)).toxics == (SLOW,)

    run(scenario)


def test_failed_toxic_writes_apply_nothing() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        await h.routes.add_toxic(route.key, SLOW)
        h.reset()
        with pytest.raises(DuplicateToxic):
            await h.routes.add_toxic(route.key, SLOW.replace(toxicity=0.1))
        with pytest.raises(NotFound, match="toxic 'nope' of route 1"):
            await h.routes.update_toxic(route.key, "nope", lambda t: t)
        with pytest.raises(NotFound, match="toxic 'nope' of route 1"):
            await h.routes.delete_toxic(route.key, "nope")
        with pytest.raises(NotFound):
            await h.routes.add_toxic(("a", 9), CUT)
        with pytest.raises(ToxicError):
            await h.routes.update_toxic(
                route.key,
                "slow",
                lambda t: t.replace(attributes=attributes("latency", {"latency": -1})),
            )
        h.store.fail["delete_toxic"] = Unavailable("the store is away")
        with pytest.raises(Unavailable):
            await h.routes.delete_toxic(route.key, "slow")
        assert h.events("plane.", "workers.", "announce") == []
        assert (await h.real_store.get_route(*route.key)).toxics == (SLOW,)

    run(scenario)


def test_concurrent_adds_cannot_overshoot_the_toxic_limit() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        results = await asyncio.gather(
            *(h.routes.add_toxic(route.key, SLOW.replace(name=f"t{i}"), 2) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Toxic) for r in results) == 2
        refused = [r for r in results if not isinstance(r, Toxic)]
        assert all(isinstance(r, Conflict) for r in refused)
        assert "--max-toxics-per-route (2)" in str(refused[0])
        assert len((await h.real_store.get_route(*route.key)).toxics) == 2

    run(scenario)
