"""The weighted pickers of core.balancer, over plain candidates (id, weight, active)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restcp.core.balancer import (
    LeastConnPicker,
    Picker,
    RandomPicker,
    RoundRobinPicker,
    SourceHashPicker,
    TwoChoicesPicker,
    make_picker,
)
from restcp.model import MAX_WEIGHT, Balance


@dataclass(frozen=True)
class Cand:
    id: int
    weight: int = 1
    active: int = 0


def ids(picks: Sequence[Cand | None]) -> list[int | None]:
    return [None if c is None else c.id for c in picks]


def ipv4_keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.getrandbits(32).to_bytes(4, "big") for _ in range(n)]


def shares(counts: Counter[int], total: int) -> dict[int, float]:
    return {i: n / total for i, n in sorted(counts.items())}


PICKERS: list[tuple[str, Callable[[], Picker]]] = [
    ("random", lambda: RandomPicker(random.Random(1))),
    ("round_robin", RoundRobinPicker),
    ("least_conn", LeastConnPicker),
    ("two_choices", lambda: TwoChoicesPicker(random.Random(1))),
    ("source_hash", SourceHashPicker),
]


# Every picker ----------------------------------------------------------------------------


@st.composite
def pools(draw: st.DrawFn) -> list[Cand]:
    chosen = draw(st.lists(st.integers(1, 40), unique=True, max_size=8))
    return [
        Cand(i, draw(st.sampled_from([0, 0, 1, 1, 2, 3, MAX_WEIGHT])), draw(st.integers(0, 9)))
        for i in chosen
    ]


@pytest.mark.parametrize(("name", "new_picker"), PICKERS, ids=[name for name, _ in PICKERS])
@settings(max_examples=150)
@given(
    rounds=st.lists(
        st.tuples(pools(), st.sets(st.integers(1, 45)), st.binary(max_size=16)),
        min_size=1,
        max_size=6,
    ),
)
def test_only_an_eligible_candidate_or_none(
    name: str, new_picker: Callable[[], Picker], rounds: list[tuple[list[Cand], set[int], bytes]]
) -> None:
    # One picker over changing pools: its cursor or ring must cope with what came before.
    picker = new_picker()
    for pool, excluded, key in rounds:
        eligible = [c for c in pool if c.weight > 0 and c.id not in excluded]
        chosen = picker.pick(pool, excluded, key)
        if not eligible:
            assert chosen is None
        else:
            assert chosen is not None
            assert any(chosen is c for c in pool)
            assert chosen.id not in excluded
            assert chosen.weight > 0


@pytest.mark.parametrize(("name", "new_picker"), PICKERS, ids=[name for name, _ in PICKERS])
def test_failover_walks_through_every_eligible_candidate_once(
    name: str, new_picker: Callable[[], Picker]
) -> None:
    picker = new_picker()
    pool = [Cand(1, 3), Cand(2, 0), Cand(3, 1, 5), Cand(7, 2), Cand(9, 1, 1)]
    tried: set[int] = set()
    while (chosen := picker.pick(pool, tried, b"\x0a\x00\x00\x01")) is not None:
        assert chosen.id not in tried
        tried.add(chosen.id)
    assert tried == {1, 3, 7, 9}


@pytest.mark.parametrize("balance", get_args(Balance))
def test_make_picker_knows_every_balance(balance: Balance) -> None:
    expected = {
        "random": RandomPicker,
        "round_robin": RoundRobinPicker,
        "least_conn": LeastConnPicker,
        "two_choices": TwoChoicesPicker,
        "source_hash": SourceHashPicker,
    }
    picker = make_picker(balance, random.Random(3))
    assert type(picker) is expected[balance]
    assert picker.pick([Cand(1), Cand(2, 0)], ()) == Cand(1)


@pytest.mark.parametrize("balance", ["random", "two_choices"])
def test_make_picker_uses_the_rng_it_is_given(balance: Balance) -> None:
    pool = [Cand(i) for i in range(1, 9)]
    first, second = make_picker(balance, random.Random(5)), make_picker(balance, random.Random(5))
    picks = ids([first.pick(pool, ()) for _ in range(50)])
    assert picks == ids([second.pick(pool, ()) for _ in range(50)])
    assert len(set(picks)) > 1


# random and two_choices: weighted shares --------------------------------------------------


@pytest.mark.parametrize(
    "new_picker",
    [lambda: RandomPicker(random.Random(11)), lambda: TwoChoicesPicker(random.Random(11))],
    ids=["random", "two_choices"],
)
def test_weighted_shares(new_picker: Callable[[], Picker]) -> None:
    picker = new_picker()
    # All idle, so two_choices has no load to prefer and only the weights count.
    pool = [Cand(1, 1), Cand(2, 2), Cand(3, 3), Cand(4, 4), Cand(5, 0)]
    n = 30_000
    got = shares(Counter(picker.pick(pool, ()).id for _ in range(n)), n)  # type: ignore[union-attr]
    assert set(got) == {1, 2, 3, 4}
    for backend_id, share in got.items():
        # Weight/10 expected; a binomial sd here is below 0.003, an unweighted picker is 0.25.
        assert abs(share - backend_id / 10) < 0.015, got


@pytest.mark.parametrize(
    "new_picker",
    [lambda: RandomPicker(random.Random(12)), lambda: TwoChoicesPicker(random.Random(12))],
    ids=["random", "two_choices"],
)
def test_weighted_shares_after_failover(new_picker: Callable[[], Picker]) -> None:
    picker = new_picker()
    pool = [Cand(1, 1), Cand(2, 3), Cand(3, 8)]
    n = 20_000
    got = shares(Counter(picker.pick(pool, {3}).id for _ in range(n)), n)  # type: ignore[union-attr]
    assert set(got) == {1, 2}
    assert abs(got[1] - 0.25) < 0.015, got


def test_two_choices_prefers_the_less_loaded_of_two() -> None:
    picker = TwoChoicesPicker(random.Random(21))
    pool = [Cand(1, 1, 10), Cand(2, 1, 0)]
    n = 10_000
    got = shares(Counter(picker.pick(pool, ()).id for _ in range(n)), n)  # type: ignore[union-attr]
    # Plain random would give each half; the loaded one wins only when both draws are it.
    assert got[2] > 0.7, got


def test_two_choices_compares_load_per_weight() -> None:
    picker = TwoChoicesPicker(random.Random(22))
    # 8 open on weight 4 is a lighter load (2 each) than 3 on weight 1.
    pool = [Cand(1, 1, 3), Cand(2, 4, 8)]
    n = 10_000
    got = shares(Counter(picker.pick(pool, ()).id for _ in range(n)), n)  # type: ignore[union-attr]
    # By weight alone backend 1 would get 0.2; losing every mixed pair leaves it 0.2 ** 2.
    assert got[1] < 0.08, got


def test_two_choices_starves_one_overloaded_backend_among_many() -> None:
    picker = TwoChoicesPicker(random.Random(23))
    pool = [Cand(1, 1, 50)] + [Cand(i, 1, 0) for i in range(2, 7)]
    n = 12_000
    got = shares(Counter(picker.pick(pool, ()).id for _ in range(n)), n)  # type: ignore[union-attr]
    assert got.get(1, 0.0) < 0.06, got
    assert all(got[i] > 0.15 for i in range(2, 7)), got


def test_two_choices_keeps_long_lived_connections_balanced() -> None:
    picker = TwoChoicesPicker(random.Random(24))
    pool = {i: Cand(i, 1, 0) for i in range(1, 11)}
    for _ in range(2_000):
        chosen = picker.pick(list(pool.values()), ())
        assert chosen is not None
        pool[chosen.id] = replace(chosen, active=chosen.active + 1)
    loads = [c.active for c in pool.values()]
    # 200 each on average; random placement would spread about +-40 (2 sd).
    assert max(loads) - min(loads) <= 12, loads


# round_robin -----------------------------------------------------------------------------


def test_round_robin_interleaves_weights_as_documented() -> None:
    picker = RoundRobinPicker()
    a, b, c = Cand(1, 3), Cand(2, 1), Cand(3, 1)
    picks = ids([picker.pick([a, b, c], ()) for _ in range(15)])
    # The docstring: weights 3,1,1 give a b c a a.
    assert picks == [1, 2, 3, 1, 1] * 3


def test_round_robin_equal_weights_is_the_plain_cycle() -> None:
    picker = RoundRobinPicker()
    pool = [Cand(i, 4) for i in (2, 5, 9)]
    assert ids([picker.pick(pool, ()) for _ in range(9)]) == [2, 5, 9] * 3


def test_round_robin_does_not_depend_on_list_order() -> None:
    picker = RoundRobinPicker()
    pool = [Cand(3, 1), Cand(1, 2), Cand(2, 1)]
    assert ids([picker.pick(pool, ()) for _ in range(8)]) == [1, 2, 3, 1] * 2


@settings(max_examples=200)
@given(
    weights=st.dictionaries(st.integers(1, 20), st.integers(0, 6), min_size=1, max_size=6),
    warm_up=st.integers(0, 30),
)
def test_round_robin_gives_exact_weights_over_a_whole_cycle(
    weights: dict[int, int], warm_up: int
) -> None:
    pool = [Cand(i, w) for i, w in weights.items()]
    cycle = sum(weights.values())
    picker = RoundRobinPicker()
    for _ in range(warm_up):
        picker.pick(pool, ())
    # Any window of one whole cycle, wherever the cursor stood, holds each id weight times.
    counts = Counter(ids([picker.pick(pool, ()) for _ in range(cycle)]))
    if cycle == 0:
        assert counts == Counter({None: 0}) or counts == Counter()
    else:
        assert counts == Counter({i: w for i, w in weights.items() if w > 0})


# least_conn ------------------------------------------------------------------------------


def test_least_conn_picks_the_lowest_load_per_weight() -> None:
    picker = LeastConnPicker()
    pool = [Cand(1, 1, 3), Cand(2, 4, 8), Cand(3, 2, 5), Cand(4, 0, 0)]
    # Loads 3, 2, 2.5; the idle one has weight 0 and takes nothing.
    assert [picker.pick(pool, ()) for _ in range(5)] == [Cand(2, 4, 8)] * 5
    assert picker.pick(pool, {2}) == Cand(3, 2, 5)


@settings(max_examples=200)
@given(pool=pools(), excluded=st.sets(st.integers(1, 40)))
def test_least_conn_result_has_the_minimum_load(pool: list[Cand], excluded: set[int]) -> None:
    chosen = LeastConnPicker().pick(pool, excluded)
    eligible = [c for c in pool if c.weight > 0 and c.id not in excluded]
    if chosen is None:
        assert not eligible
    else:
        assert chosen.active / chosen.weight == min(c.active / c.weight for c in eligible)


def test_least_conn_spreads_ties() -> None:
    picker = LeastConnPicker()
    pool = [Cand(1, 1, 2), Cand(2, 2, 4), Cand(3, 3, 6), Cand(4, 1, 3)]
    picks = ids([picker.pick(pool, ()) for _ in range(30)])
    assert Counter(picks) == Counter({1: 10, 2: 10, 3: 10})


def test_least_conn_fills_backends_by_weight() -> None:
    picker = LeastConnPicker()
    pool = {1: Cand(1, 1), 2: Cand(2, 2), 3: Cand(3, 5)}
    for _ in range(800):
        chosen = picker.pick(list(pool.values()), ())
        assert chosen is not None
        pool[chosen.id] = replace(chosen, active=chosen.active + 1)
    assert [c.active for c in pool.values()] == [100, 200, 500]


# source_hash -----------------------------------------------------------------------------

FIVE = [Cand(i) for i in range(1, 6)]


def placement(picker: Picker, pool: Sequence[Cand], keys: Sequence[bytes]) -> dict[bytes, int]:
    out = {}
    for key in keys:
        chosen = picker.pick(pool, (), key)
        assert chosen is not None
        out[key] = chosen.id
    return out


@given(key=st.binary(min_size=1, max_size=16))
def test_source_hash_same_key_same_backend(key: bytes) -> None:
    picker = SourceHashPicker()
    first = picker.pick(FIVE, (), key)
    assert all(picker.pick(FIVE, (), key) == first for _ in range(5))
    # A fresh picker, or the same backends listed in another order, agree: every node of a
    # cluster sends one client to one backend.
    assert SourceHashPicker().pick(FIVE[::-1], (), key) == first


def test_source_hash_spreads_keys_evenly() -> None:
    keys = ipv4_keys(20_000, seed=31)
    got = shares(Counter(placement(SourceHashPicker(), FIVE, keys).values()), len(keys))
    assert set(got) == {1, 2, 3, 4, 5}
    assert all(0.16 <= share <= 0.24 for share in got.values()), got


def test_source_hash_spreads_keys_by_weight() -> None:
    keys = ipv4_keys(20_000, seed=32)
    pool = [Cand(1, 1), Cand(2, 2), Cand(3, 3), Cand(4, 4), Cand(5, 0)]
    got = shares(Counter(placement(SourceHashPicker(), pool, keys).values()), len(keys))
    assert set(got) == {1, 2, 3, 4}
    for backend_id, share in got.items():
        assert abs(share / (backend_id / 10) - 1) < 0.25, got


def test_source_hash_adding_a_backend_moves_keys_only_to_it() -> None:
    keys = ipv4_keys(20_000, seed=33)
    picker = SourceHashPicker()
    before = placement(picker, FIVE, keys)
    after = placement(picker, [*FIVE, Cand(6)], keys)
    moved = [k for k in keys if before[k] != after[k]]
    assert {after[k] for k in moved} == {6}
    # About 1/6 should move; a modulo hash would move about 5/6.
    assert 1 / 6 - 0.05 <= len(moved) / len(keys) <= 1 / 6 + 0.05


def test_source_hash_removing_a_backend_moves_only_its_keys() -> None:
    keys = ipv4_keys(20_000, seed=34)
    picker = SourceHashPicker()
    before = placement(picker, FIVE, keys)
    after = placement(picker, [c for c in FIVE if c.id != 3], keys)
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == 3}
    # Its keys are shared out among the rest, not dumped on one neighbour.
    assert len({after[k] for k in moved}) >= 3


def test_source_hash_failover_keeps_the_others_in_place() -> None:
    keys = ipv4_keys(5_000, seed=35)
    picker = SourceHashPicker()
    home = placement(picker, FIVE, keys)
    for key in keys:
        chosen = picker.pick(FIVE, {2}, key)
        assert chosen is not None
        if home[key] == 2:
            assert chosen.id != 2
            # A failover is as sticky as the first pick.
            assert picker.pick(FIVE, {2}, key) == chosen
        else:
            assert chosen.id == home[key]
    # And the ring is unchanged by it: the next first pick is the home again.
    assert placement(picker, FIVE, keys) == home


def test_source_hash_failover_walks_on_until_nothing_is_left() -> None:
    picker = SourceHashPicker()
    key = bytes([203, 0, 113, 9])
    tried: list[int] = []
    while (chosen := picker.pick(FIVE, tried, key)) is not None:
        tried.append(chosen.id)
    assert sorted(tried) == [1, 2, 3, 4, 5]
    # The walk is a function of the key: a second client from it goes the same way.
    again: list[int] = []
    while (chosen := picker.pick(FIVE, again, key)) is not None:
        again.append(chosen.id)
    assert again == tried


def test_source_hash_weight_change_moves_keys_only_to_or_from_that_backend() -> None:
    keys = ipv4_keys(10_000, seed=36)
    picker = SourceHashPicker()
    before = placement(picker, FIVE, keys)
    heavier = [Cand(4, 3) if c.id == 4 else c for c in FIVE]
    after = placement(picker, heavier, keys)
    assert {after[k] for k in keys if before[k] != after[k]} == {4}
    lighter = placement(picker, [Cand(4, 1) if c.id == 4 else c for c in heavier], keys)
    assert lighter == before


def test_source_hash_is_cheap_when_heavy_backends_come_and_go() -> None:
    # Health flaps change the candidates on a live event loop: no pick may stall it.
    picker = SourceHashPicker()
    pool = [Cand(i, MAX_WEIGHT) for i in range(1, 51)]
    keys = ipv4_keys(200, seed=37)
    started = time.perf_counter()
    for n, key in enumerate(keys):
        assert picker.pick(pool[: 40 + n % 11], (), key) is not None
    assert time.perf_counter() - started < 2.0
