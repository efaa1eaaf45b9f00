"""The compiled engine's backend picks (``_relay.Picker``, the ``choose`` the engine calls at
each connect) held to core.balancer's pickers, as RouteRuntime.pick drives them: the ids
tried for the client and the backends at their max_connections excluded.

round_robin, least_conn and source_hash must give the very same backend as Python for the
same inputs, pick after pick; random and two_choices draw from another generator, so they
are held to the same rules and the same shares."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restcp import engine
from restcp.core.balancer import (
    LeastConnPicker,
    Picker,
    RoundRobinPicker,
    SourceHashPicker,
)
from restcp.model import MAX_WEIGHT


def compiled() -> ModuleType:
    module, why = engine.load()
    assert module is not None, why
    return module


@dataclass
class Row:
    """A backend as both sides see it: the Python picker's candidate, the engine's row."""

    id: int
    weight: int = 1
    active: int = 0
    connecting: int = 0
    max_connections: int | None = None

    @property
    def full(self) -> bool:
        cap = self.max_connections
        return cap is not None and self.active + self.connecting >= cap

    def row(self) -> tuple[int, int, int, int, int]:
        cap = -1 if self.max_connections is None else self.max_connections
        return (self.id, self.weight, self.active, self.connecting, cap)


def engine_picker(balance: str, rows: Sequence[Row], seed: int = 1) -> Any:
    picker = compiled().Picker(balance, seed)
    picker.table([r.row() for r in rows])
    return picker


def python_pick(
    picker: Picker, rows: Sequence[Row], tried: Sequence[int], key: bytes
) -> int | None:
    """What RouteRuntime.pick asks of its picker: the tried ones and the full ones excluded."""
    excluded = set(tried) | {r.id for r in rows if r.full}
    chosen = picker.pick(rows, excluded, key)
    return None if chosen is None else chosen.id


def ip_keys(n: int, seed: int) -> list[bytes]:
    """Client addresses as the engine writes them (inet_ntop): v4, v6 and v4-mapped v6."""
    rng = random.Random(seed)
    keys: list[bytes] = []
    for i in range(n):
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        if i % 3 == 0:
            keys.append(str(v4).encode())
        elif i % 3 == 1:
            keys.append(str(ipaddress.IPv6Address(rng.getrandbits(128))).encode())
        else:
            keys.append(f"::ffff:{v4}".encode())
    return keys


@st.composite
def tables(draw: st.DrawFn, capped: bool = True) -> list[Row]:
    """Up to 8 backends, some of weight 0, some at (or over) their max_connections."""
    chosen = draw(st.lists(st.integers(1, 2**40), unique=True, max_size=8))
    rows = []
    for i in chosen:
        active = draw(st.integers(0, 6))
        cap = draw(st.none() | st.integers(0, 8)) if capped else None
        rows.append(
            Row(
                i,
                draw(st.sampled_from([0, 1, 1, 2, 3, 7, MAX_WEIGHT])),
                active,
                draw(st.integers(0, 2)),
                cap,
            )
        )
    return rows


# source_hash: the same hash, the same score, the same backend -------------------------------


def test_source_hash_picks_as_python_for_many_clients_and_tables() -> None:
    rng = random.Random(16)
    python = SourceHashPicker()
    compared = 0
    for key in ip_keys(3000, seed=7):
        rows = [
            Row(rng.randint(1, 10 ** rng.randint(1, 18)), rng.choice([0, 1, 1, 2, 5, MAX_WEIGHT]))
            for _ in range(rng.randint(1, 9))
        ]
        for row in rows:
            if rng.random() < 0.2:
                row.max_connections, row.active = 1, rng.randint(0, 1)
        tried = tuple(r.id for r in rows if rng.random() < 0.2)
        got = engine_picker("source_hash", rows).pick(tried, key)
        assert got == python_pick(python, rows, tried, key), (key, rows, tried)
        compared += got is not None
    assert compared > 2000  # most of them picked a backend, not None on both sides


@settings(max_examples=300)
@given(rows=tables(), key=st.binary(max_size=300), tried=st.sets(st.integers(1, 2**40)))
def test_source_hash_any_key_length(rows: list[Row], key: bytes, tried: set[int]) -> None:
    """Keys past one BLAKE2b block (128 bytes) hash as hashlib does too."""
    ordered = tuple(sorted(tried | {r.id for r in rows[:1]}))
    got = engine_picker("source_hash", rows).pick(ordered, key)
    assert got == python_pick(SourceHashPicker(), rows, ordered, key)


def test_source_hash_failover_walks_the_same_order() -> None:
    rows = [Row(i, w) for i, w in ((1, 1), (2, 3), (5, 1), (9, 2))]
    for key in ip_keys(200, seed=3):
        picker = engine_picker("source_hash", rows)
        tried: list[int] = []
        while (got := picker.pick(tuple(tried), key)) is not None:
            assert got == python_pick(SourceHashPicker(), rows, tried, key)
            tried.append(got)
        assert sorted(tried) == [1, 2, 5, 9]


# round_robin and least_conn: the same cursor, the same sequence ----------------------------


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(tables(), st.lists(st.integers(0, 7), max_size=3), st.integers(1, 12)),
        min_size=1,
        max_size=6,
    )
)
def test_round_robin_sequence_as_python(steps: list[tuple[list[Row], list[int], int]]) -> None:
    """One cursor on each side over tables that change between runs of picks (the cursor
    must go on from where it was), with failovers excluding some of the rows."""
    picker = compiled().Picker("round_robin")
    python = RoundRobinPicker()
    for rows, tried_at, picks in steps:
        picker.table([r.row() for r in rows])
        tried = tuple(rows[i].id for i in tried_at if i < len(rows))
        for _ in range(picks):
            assert picker.pick(tried) == python_pick(python, rows, tried, b"")


def test_weighted_round_robin_interleaves_as_python() -> None:
    rows = [Row(1, 3), Row(2, 1), Row(3, 1)]
    picker = engine_picker("round_robin", rows)
    got = [picker.pick() for _ in range(10)]
    assert got == [1, 2, 3, 1, 1, 1, 2, 3, 1, 1]


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(tables(), st.lists(st.integers(0, 7), max_size=3), st.integers(1, 12)),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**32),
)
def test_least_conn_sequence_as_python(
    steps: list[tuple[list[Row], list[int], int]], seed: int
) -> None:
    """Each pick opens a connection to the backend picked (its load grows, its cap may be
    reached); between picks some connections end. Both sides see the same loads."""
    rng = random.Random(seed)
    picker = compiled().Picker("least_conn")
    python = LeastConnPicker()
    for rows, tried_at, picks in steps:
        tried = tuple(rows[i].id for i in tried_at if i < len(rows))
        for _ in range(picks):
            picker.table([r.row() for r in rows])
            got = picker.pick(tried)
            assert got == python_pick(python, rows, tried, b"")
            for row in rows:
                if row.id == got:
                    row.active += 1
                elif row.active and rng.random() < 0.3:
                    row.active -= 1


def test_least_conn_weighs_the_load() -> None:
    # 4 open on a weight-2 backend is a load of 2, less than 3 on a weight-1.
    picker = engine_picker("least_conn", [Row(1, 1, active=3), Row(2, 2, active=4)])
    assert picker.pick() == 2


# random and two_choices: the same rules, the same shares -----------------------------------


@pytest.mark.parametrize("balance", ["random", "two_choices", "round_robin", "least_conn"])
@settings(max_examples=150)
@given(rows=tables(), tried=st.sets(st.integers(1, 2**40), max_size=3), seed=st.integers(1, 99))
def test_only_an_eligible_backend_or_none(
    balance: str, rows: list[Row], tried: set[int], seed: int
) -> None:
    ordered = tuple(sorted(tried | {r.id for r in rows if r.weight == 1}))
    eligible = {r.id for r in rows if r.weight > 0 and r.id not in ordered and not r.full}
    picker = engine_picker(balance, rows, seed)
    for _ in range(5):
        got = picker.pick(ordered)
        assert got in eligible if eligible else got is None


@pytest.mark.parametrize("failover", [False, True], ids=["first_pick", "failover"])
@pytest.mark.parametrize("capped", [False, True], ids=["no_cap", "a_cap"])
def test_random_shares_follow_the_weights(failover: bool, capped: bool) -> None:
    """The first pick of a route without caps takes a shortcut (a binary search of the
    cumulative weights); a failover or a capped table walks the rows: the same shares."""
    rows = [Row(1, 1), Row(2, 3), Row(3, 0), Row(4, 4), Row(5, 8)]
    if capped:
        rows.append(Row(6, 50, active=2, max_connections=2))
        rows[0].max_connections = 100
    tried = (5,) if failover else ()
    picker = engine_picker("random", rows, seed=11)
    n = 80_000
    counts = Counter(picker.pick(tried) for _ in range(n))
    live = [r for r in rows if r.weight and not r.full and r.id not in tried]
    total = sum(r.weight for r in live)
    assert set(counts) == {r.id for r in live}
    for r in live:
        assert counts[r.id] / n == pytest.approx(r.weight / total, abs=0.01)


def test_two_choices_prefers_the_less_loaded() -> None:
    """Two equal backends, one loaded: it is picked only when both draws land on it (1/4)."""
    picker = engine_picker("two_choices", [Row(1, 1, active=5), Row(2, 1, active=0)], seed=5)
    n = 40_000
    counts = Counter(picker.pick() for _ in range(n))
    assert counts[1] / n == pytest.approx(0.25, abs=0.01)
    # On a tie the first draw wins (as Python's ``<=``): the shares are the weights'.
    even = engine_picker("two_choices", [Row(1, 1), Row(2, 3)], seed=5)
    counts = Counter(even.pick() for _ in range(n))
    assert counts[2] / n == pytest.approx(0.75, abs=0.01)


# caps and bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("balance", ["random", "round_robin", "least_conn", "two_choices"])
def test_a_backend_at_its_cap_is_skipped_and_all_full_is_none(balance: str) -> None:
    rows = [Row(1, 5, active=2, max_connections=2), Row(2, 1, connecting=1, max_connections=3)]
    picker = engine_picker(balance, rows)
    assert {picker.pick() for _ in range(50)} == {2}
    rows[1].active = 2  # 2 open + 1 connecting: at its cap of 3
    picker.table([r.row() for r in rows])
    assert picker.pick() is None
    assert engine_picker("source_hash", rows).pick((), b"10.0.0.1") is None


def test_an_empty_table_picks_none() -> None:
    for balance in compiled().BALANCES:
        assert engine_picker(balance, []).pick() is None


def test_bad_rows_are_refused() -> None:
    picker = engine_picker("round_robin", [Row(1)])
    with pytest.raises(ValueError, match="5 fields, not 3"):
        picker.table([(1, 1, 0)])
    with pytest.raises(ValueError, match="bad row"):
        picker.table([(1, -1, 0, 0, -1)])
    with pytest.raises(KeyError):
        compiled().Picker("fastest")
    assert picker.pick() == 1  # the table it had
