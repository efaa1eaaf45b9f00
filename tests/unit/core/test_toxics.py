"""The toxic types' attributes, their checks, and the seeded draws (core/toxics.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.core import toxics
from restcp.core.toxics import ToxicError
from restcp.model import Toxic


def test_every_attribute_filled_in_and_sorted() -> None:
    assert toxics.attributes("latency", {"latency": 200}) == (("jitter", 0), ("latency", 200))
    assert toxics.attributes("slicer", {}) == (
        ("average_size", 1024),
        ("delay", 0),
        ("size_variation", 0),
    )


def test_a_patch_merges_over_the_current_values() -> None:
    current = dict(toxics.attributes("latency", {"latency": 200, "jitter": 20}))
    merged = toxics.attributes("latency", {"jitter": 5}, current)
    assert dict(merged) == {"latency": 200, "jitter": 5}


@pytest.mark.parametrize(
    ("type_", "given_", "field"),
    [
        ("lag", {}, "type"),
        ("latency", {"delay": 1}, "attributes.delay"),
        ("latency", {"latency": -1}, "attributes.latency"),
        ("latency", {"latency": "100"}, "attributes.latency"),
        ("latency", {"latency": True}, "attributes.latency"),
        ("latency", {"latency": 1.5}, "attributes.latency"),
        ("bandwidth", {}, "attributes.rate"),
        ("bandwidth", {"rate": 0}, "attributes.rate"),
        ("limit_data", {}, "attributes.bytes"),
        ("limit_time", {}, "attributes.time"),
        ("slicer", {"average_size": 10, "size_variation": 10}, "attributes.size_variation"),
    ],
)
def test_a_bad_toxic_names_its_field(type_: str, given_: dict[str, object], field: str) -> None:
    with pytest.raises(ToxicError) as caught:
        toxics.attributes(type_, given_)
    assert caught.value.field == field


def test_integral_floats_are_integers() -> None:
    assert dict(toxics.attributes("latency", {"latency": 200.0}))["latency"] == 200


def test_default_name_and_name_rules() -> None:
    assert toxics.default_name("latency", "downstream") == "latency_downstream"
    assert toxics.check_name("slow-db.1") == "slow-db.1"
    # Path segments a URL keeps as they are: ASCII only (no name to percent-encode), and
    # not "." or "..", which URL resolution removes.
    for bad in ("", "a/b", "x" * 65, "..?", ".", "..", "café", "٣", "a b"):
        with pytest.raises(ToxicError):
            toxics.check_name(bad)


def test_toxicity_and_clients_are_checked() -> None:
    assert toxics.check_toxicity(0.5) == 0.5
    for bad in (-0.1, 1.1, "1", True):
        with pytest.raises(ToxicError):
            toxics.check_toxicity(bad)
    assert toxics.check_clients(["10.0.0.7", "10.1.0.0/16", "::1"]) == (
        "10.0.0.7/32",
        "10.1.0.0/16",
        "::1/128",
    )
    with pytest.raises(ToxicError) as caught:
        toxics.check_clients(["10.0.0.0/8", "nope"])
    assert caught.value.field == "clients.1"


def test_clients_aim_a_toxic() -> None:
    everyone = Toxic("t", "latency")
    some = Toxic("t", "latency", clients=("10.1.0.0/16",))
    assert toxics.affects(everyone, "192.0.2.1")
    assert toxics.affects(some, "10.1.2.3")
    assert toxics.affects(some, "::ffff:10.1.2.3")
    assert not toxics.affects(some, "10.2.0.1")
    assert not toxics.affects(some, None)


@given(
    seed=st.integers(0, 2**63),
    connection=st.integers(0, 10**9),
    name=st.text(min_size=1, max_size=20),
)
def test_draws_are_a_function_of_seed_route_connection_and_toxic(
    seed: int, connection: int, name: str
) -> None:
    first = toxics.draws(seed, ("app", 1), connection, name)
    again = toxics.draws(seed, ("app", 1), connection, name)
    assert [first.random() for _ in range(5)] == [again.random() for _ in range(5)]


def test_another_seed_draws_another_affected_set() -> None:
    half = Toxic("t", "latency", toxicity=0.5)

    def affected(seed: int) -> set[int]:
        return {n for n in range(200) if toxics.meets(half, toxics.draws(seed, ("a", 1), n, "t"))}

    assert affected(7) == affected(7)
    assert affected(7) != affected(8)
    assert 60 < len(affected(7)) < 140
    assert not any(
        toxics.meets(half.replace(toxicity=0.0), toxics.draws(7, ("a", 1), n, "t"))
        for n in range(200)
    )
