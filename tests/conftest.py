from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Node, free_port_range

# pytest's own fixture for running pytest on test files: the plugin's tests use it.
pytest_plugins = ["pytester"]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A ready `restcp serve` on a free API port, a fresh SQLite store, a free port range."""
    lo, hi = free_port_range()
    proc = Node(
        "--api", "127.0.0.1:0",
        "--store", f"sqlite:///{tmp_path}/restcp.db",
        "--port-range", f"{lo}-{hi}",
        "--log-level", "debug",
    )  # fmt: skip
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
