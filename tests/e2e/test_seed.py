"""The node's seed of the toxics' draws (--seed, RESTCP_SEED): logged at start whether
given or drawn, so that any run can be replayed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import StartNode, serve_args
from tests.helpers import free_port_range

SEED_LINE = re.compile(r" INFO restcp\.node seed=(\d+) \((random|given)")


def logged_seed(start_node: StartNode, store: Path, *extra: str, **kw: object) -> str:
    """The seed a node started with these arguments logs, and whether it drew it."""
    lo, hi = free_port_range(4)
    node = start_node(*serve_args(store, lo, hi, *extra), **kw)
    [line] = [line for line in node.lines if " seed=" in line]
    found = SEED_LINE.search(line)
    assert found is not None, line
    return f"{found[1]} {found[2]}"


def test_a_node_without_a_seed_draws_one_and_logs_it(start_node: StartNode, tmp_path: Path) -> None:
    first = logged_seed(start_node, tmp_path / "a.db")
    second = logged_seed(start_node, tmp_path / "b.db")
    assert first.endswith(" random")
    assert second.endswith(" random")
    assert first != second


def test_a_seed_given_by_flag_or_variable_is_the_one_logged(
    start_node: StartNode, tmp_path: Path
) -> None:
    assert logged_seed(start_node, tmp_path / "a.db", "--seed", "42") == "42 given"
    assert logged_seed(start_node, tmp_path / "b.db", env={"RESTCP_SEED": "9001"}) == "9001 given"
