from __future__ import annotations

import time

import pytest

from restcp.core.sni import SniTable, clashes
from restcp.model import canonical_server_name as canonical


def test_exact_then_longest_wildcard_then_default() -> None:
    table = SniTable(
        [
            ("db1", ["db1.example.com"]),
            ("staging", ["*.staging.example.com"]),
            ("example", ["*.example.com"]),
            ("default", ["*"]),
        ]
    )
    assert table.lookup("db1.example.com") == "db1"
    assert table.lookup("a.staging.example.com") == "staging"
    assert table.lookup("a.b.staging.example.com") == "staging"
    assert table.lookup("staging.example.com") == "example"
    assert table.lookup("other.example.com") == "example"
    assert table.lookup("example.com") == "default"
    assert table.lookup("elsewhere.org") == "default"
    assert table.lookup(None) == "default"


def test_without_a_default_unknown_names_go_nowhere() -> None:
    table = SniTable([("db1", ["db1.example.com"])])
    assert table.lookup("db2.example.com") is None
    assert table.lookup(None) is None
    assert table.lookup("com") is None


def test_canonical_patterns() -> None:
    assert canonical("DB1.Example.COM.") == "db1.example.com"
    assert canonical("*.Staging.example.com") == "*.staging.example.com"
    assert canonical("*") == "*"
    assert canonical("xn--bcher-kva.example") == "xn--bcher-kva.example"
    for bad in ["", ".", "*.", "a.*.com", "**.com", "bücher.example", "a..b", "-a.com", "a b"]:
        with pytest.raises(ValueError, match="is not a server name"):
            canonical(bad)


def test_clashes_name_the_pattern_and_both_owners() -> None:
    claims = [(1, ["a.com", "*"]), (2, ["b.com"]), (3, ["*", "a.com"])]
    assert clashes(claims) == [("*", 1, 3), ("a.com", 1, 3)]
    assert clashes([(1, ["a.com"]), (1, ["a.com"])]) == []


def test_the_first_claim_keeps_a_pattern_stored_twice() -> None:
    table = SniTable([(1, ["a.com", "*"]), (2, ["a.com", "*"])])
    assert table.lookup("a.com") == 1
    assert table.lookup(None) == 1


def test_lookup_does_not_grow_with_the_routes() -> None:
    """1,000 and 100,000 routes on one port: a lookup costs the same (dict look-ups per
    label of the name), within noise."""

    def per_lookup(routes: int) -> float:
        table = SniTable(
            [(i, [f"db{i}.example.com", f"*.s{i}.example.com"]) for i in range(routes)]
        )
        names = [f"db{i}.example.com" for i in range(0, routes, max(1, routes // 500))]
        names += [f"x.y.s{i}.example.com" for i in range(0, routes, max(1, routes // 500))]
        names += ["nothing.example.org"] * 100
        start = time.perf_counter()
        for _ in range(20):
            for name in names:
                table.lookup(name)
        return (time.perf_counter() - start) / (20 * len(names))

    small, large = per_lookup(1_000), per_lookup(100_000)
    print(f"sni lookup: {small * 1e9:.0f} ns at 1,000 routes, {large * 1e9:.0f} ns at 100,000")
    assert large < small * 3
