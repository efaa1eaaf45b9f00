from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.core.balancer import Picker, RandomPicker, RoundRobinPicker, make_picker
from restcp.model import Backend


def backends(*ids: int) -> list[Backend]:
    return [Backend(i, "127.0.0.1", 9000 + i) for i in ids]


def ids(picks: list[Backend | None]) -> list[int | None]:
    return [None if b is None else b.id for b in picks]


PICKERS = [
    pytest.param(lambda: RandomPicker(random.Random(7)), id="random"),
    pytest.param(RoundRobinPicker, id="round_robin"),
]


@pytest.mark.parametrize("new_picker", PICKERS)
def test_no_backends_gives_none(new_picker) -> None:
    assert new_picker().pick([], ()) is None


@pytest.mark.parametrize("new_picker", PICKERS)
def test_all_tried_gives_none(new_picker) -> None:
    assert new_picker().pick(backends(1, 2, 3), {1, 2, 3}) is None


@pytest.mark.parametrize("new_picker", PICKERS)
@given(
    available=st.sets(st.integers(1, 12), max_size=8),
    tried=st.sets(st.integers(1, 12)),
    rounds=st.integers(1, 5),
)
def test_never_picks_a_tried_backend(new_picker, available, tried, rounds) -> None:
    picker: Picker = new_picker()
    pool = backends(*sorted(available))
    for _ in range(rounds):
        chosen = picker.pick(pool, tried)
        if available <= tried:
            assert chosen is None
        else:
            assert chosen is not None
            assert chosen in pool
            assert chosen.id not in tried


def test_random_is_uniform_over_backends() -> None:
    picker = RandomPicker(random.Random(1234))
    pool = backends(1, 2, 3, 4)
    counts = Counter(picker.pick(pool, ()).id for _ in range(8000))
    assert set(counts) == {1, 2, 3, 4}
    # 2000 expected each; the seeded run lands well inside +-10%, a biased picker would not.
    assert all(1800 <= n <= 2200 for n in counts.values()), counts


def test_random_failover_is_uniform_over_untried() -> None:
    picker = RandomPicker(random.Random(99))
    pool = backends(1, 2, 3, 4)
    counts = Counter(picker.pick(pool, {2}).id for _ in range(6000))
    assert set(counts) == {1, 3, 4}
    assert all(1800 <= n <= 2200 for n in counts.values()), counts


def test_round_robin_cycles_in_order() -> None:
    picker = RoundRobinPicker()
    pool = backends(1, 2, 3)
    assert ids([picker.pick(pool, ()) for _ in range(7)]) == [1, 2, 3, 1, 2, 3, 1]


def test_round_robin_failover_continues_the_cycle() -> None:
    picker = RoundRobinPicker()
    pool = backends(1, 2, 3)
    assert ids([picker.pick(pool, ())]) == [1]
    # The first client's connect to 1 failed: it fails over to the next in the cycle...
    assert ids([picker.pick(pool, {1})]) == [2]
    # ...and the next client does not get 2 again.
    assert ids([picker.pick(pool, ())]) == [3]
    # Failover wraps around past tried ones.
    assert ids([picker.pick(pool, {1})]) == [2]
    assert ids([picker.pick(pool, {3, 1})]) == [2]


def test_round_robin_continues_after_a_backend_is_removed() -> None:
    picker = RoundRobinPicker()
    assert ids([picker.pick(backends(1, 2, 3, 4), ())]) == [1]
    # 1 was removed: positions shifted, but the next in id order is still 2, not 3.
    assert ids([picker.pick(backends(2, 3, 4), ()) for _ in range(4)]) == [2, 3, 4, 2]
    assert ids([picker.pick(backends(4), ()) for _ in range(2)]) == [4, 4]
    assert picker.pick([], ()) is None
    assert ids([picker.pick(backends(1, 4), ())]) == [1]


def test_round_robin_takes_in_added_backends() -> None:
    picker = RoundRobinPicker()
    assert ids([picker.pick(backends(1, 2), ()) for _ in range(2)]) == [1, 2]
    grown = backends(1, 2, 3, 4)
    assert ids([picker.pick(grown, ()) for _ in range(5)]) == [3, 4, 1, 2, 3]


@given(
    changes=st.lists(st.sets(st.integers(1, 10), min_size=1), min_size=1, max_size=6),
)
def test_round_robin_is_fair_whatever_the_list_did_before(changes: list[set[int]]) -> None:
    picker = RoundRobinPicker()
    for available in changes:
        pool = backends(*sorted(available))
        # Whatever the cursor was left at, the next len(pool) picks visit each one once.
        assert sorted(ids([picker.pick(pool, ()) for _ in pool])) == sorted(available)


def test_make_picker() -> None:
    assert isinstance(make_picker("round_robin"), RoundRobinPicker)
    assert isinstance(make_picker("random"), RandomPicker)
