from __future__ import annotations

from typing import Any

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


class CountingDict(dict[str, int]):
    """A dict that counts its probes: how much work a lookup does, without a clock."""

    probes = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.probes += 1
        return super().get(key, default)


def test_lookup_does_not_grow_with_the_routes() -> None:
    """1,000 and 100,000 routes on one port: a lookup makes the same dict probes (one per
    label of the name at most, plus the exact one), whatever the number of routes."""

    def probes(routes: int) -> list[int]:
        table = SniTable(
            [(i, [f"db{i}.example.com", f"*.s{i}.example.com"]) for i in range(routes)]
        )
        exact, wildcards = CountingDict(table.exact), CountingDict(table.wildcards)
        table.exact, table.wildcards = exact, wildcards
        counts = []
        for name in ["db7.example.com", "x.y.s7.example.com", "nothing.example.org"]:
            before = exact.probes + wildcards.probes
            table.lookup(name)
            counts.append(exact.probes + wildcards.probes - before)
        return counts

    small, large = probes(1_000), probes(100_000)
    # The exact hit: one probe; a wildcard three labels deep: the exact probe, then ".y…"
    # then ".s7…"; no match: the exact probe then one per dot of the name.
    assert small == large == [1, 3, 3]
