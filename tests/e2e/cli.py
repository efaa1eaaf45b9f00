"""Running the ``restcp`` command as a user types it: a real process, pointed at a real node
through RESTCP_URL (unless a test sets the environment itself), with none of this test
run's other RESTCP_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from tests.helpers import Node

RESTCP = [sys.executable, "-m", "restcp"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTCP_")}
    return {**env, **extra}


@dataclass
class Done:
    """A finished command: its exit status and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, (self.code, self.out, self.err)
        return json.loads(self.out)

    def yaml(self) -> Any:
        assert self.code == 0, (self.code, self.out, self.err)
        return yaml.safe_load(self.out)

    def lines(self) -> list[list[str]]:
        """A table's lines, split into cells at runs of two spaces or more (a header first)."""
        assert self.code == 0, (self.code, self.out, self.err)
        return [[c for c in line.split("  ") if c.strip()] for line in self.out.splitlines()]


def restcp(node: Node | None, *args: str, env: dict[str, str] | None = None) -> Done:
    """``restcp ARGS`` against ``node`` (RESTCP_URL), or with ``env`` alone."""
    variables = clean_env(**({"RESTCP_URL": node.api} if node is not None else {}))
    done = subprocess.run(
        [*RESTCP, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**variables, **(env or {})},
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def row(done: Done, first: str) -> list[str]:
    """The cells of the table line whose first cell is ``first``."""
    for cells in done.lines():
        if cells and cells[0].strip() == first:
            return [c.strip() for c in cells]
    raise AssertionError(f"no line starting {first!r} in:\n{done.out}")


def field(done: Done, name: str) -> str:
    """The value of ``name`` in a ``name  value`` listing (``show``)."""
    cells = row(done, name)
    return cells[1] if len(cells) > 1 else ""
