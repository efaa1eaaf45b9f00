"""proxy.deadlines: many owners' deadlines on one loop timer, never early, in order."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.proxy.deadlines import MIN_QUANTUM_MS, QUANTA_PER_TIMEOUT, Deadlines, slot_of


class Log(list[tuple[str, float]]):
    """The owners told, in order; ``reached(n)`` waits until n have been."""

    def __init__(self) -> None:
        super().__init__()
        self.grew = asyncio.Event()

    def append(self, item: tuple[str, float]) -> None:
        super().append(item)
        self.grew.set()

    async def reached(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self) < count:
                self.grew.clear()
                await self.grew.wait()


class Owner:
    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self.log = log
        self.deadline_slot: int | None = None
        self.then: Deadlines | None = None  # file again here, 0.05 s later, once
        self.loop = asyncio.get_running_loop()

    def deadline_reached(self) -> None:
        self.log.append((self.name, self.loop.time()))
        if self.then is not None:
            deadlines, self.then = self.then, None
            deadlines.file(self, self.loop.time() + 0.05, 1.0)


@given(
    when=st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_subnormal=False),
    timeout=st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
)
def test_slot_is_never_early_and_late_by_one_quantum_at_most(when: float, timeout: float) -> None:
    slot = slot_of(when, timeout)
    quantum = max(MIN_QUANTUM_MS, int(timeout * 1000) // QUANTA_PER_TIMEOUT)
    assert slot >= when * 1000
    assert slot - when * 1000 <= quantum
    assert slot % quantum == 0


def test_owners_fire_in_order_never_early() -> None:
    async def main() -> list[tuple[str, float, float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        log = Log()
        start = loop.time()
        due = {"c": start + 0.15, "a": start + 0.03, "b": start + 0.08}
        owners = {name: Owner(name, log) for name in due}
        for name, when in due.items():
            deadlines.file(owners[name], when, 0.2)
        await log.reached(3)
        deadlines.close()
        return [(name, at, due[name]) for name, at in log]

    fired = asyncio.run(main())
    assert [name for name, _, _ in fired] == ["a", "b", "c"]
    for _name, at, when in fired:
        assert at >= when


def test_drop_and_refile() -> None:
    """A dropped owner is never told; refiling moves it; an owner may file itself again
    from its own call, and the earliest moment left is what the timer is set for."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        log = Log()
        first, dropped, moved, last = (Owner(n, log) for n in ("first", "dropped", "moved", "last"))
        now = loop.time()
        first.then = deadlines
        deadlines.file(first, now + 0.02, 0.2)
        deadlines.file(dropped, now + 0.01, 0.2)
        deadlines.file(moved, now + 0.3, 1.0)
        deadlines.file(moved, now + 0.04, 0.2)  # earlier now
        deadlines.file(last, now + 0.2, 1.0)
        deadlines.drop(dropped)
        assert dropped.deadline_slot is None
        assert len(deadlines) == 3
        await log.reached(4)
        assert len(deadlines) == 0
        deadlines.close()
        return [name for name, _ in log]

    assert asyncio.run(main()) == ["first", "moved", "first", "last"]


def test_many_owners_share_few_moments() -> None:
    """10,000 relays of a one-hour idle timeout, filed over a second, make one or two
    moments: the heap does not grow with the number of relays."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        log = Log()
        now = loop.time()
        owners = [Owner(str(i), log) for i in range(10_000)]
        for i, owner in enumerate(owners):
            deadlines.file(owner, now + 3600 + i / 10_000, 3600)
        assert len(deadlines) == 10_000
        assert len(deadlines._order) <= 2
        for owner in owners:
            deadlines.drop(owner)
        assert len(deadlines) == 0
        deadlines.close()
        assert log == []

    asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_close_cancels_the_timer(loop: str) -> None:
    async def main() -> None:
        deadlines = Deadlines()
        log = Log()
        owner = Owner("x", log)
        deadlines.file(owner, asyncio.get_running_loop().time() + 0.02, 0.1)
        deadlines.close()
        assert owner.deadline_slot is None
        await asyncio.sleep(0.1)
        assert log == []

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
