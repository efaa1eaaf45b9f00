"""The history of a fault run: every write, check, fault and probe as one event, a dict of
JSON values, in the order recorded. ``t`` is seconds since the run began (monotonic),
``wall`` Unix time (to line events up with the nodes' own log lines)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class History:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def add(self, kind: str, **fields: Any) -> Event:
        event: Event = {"kind": kind, "t": self.now(), "wall": round(time.time(), 4), **fields}
        with self._lock:
            self.events.append(event)
        return event

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def dump(self, path: Path) -> Path:
        """Write the history as JSON lines (one event a line)."""
        with path.open("w") as out:
            for event in self.snapshot():
                out.write(json.dumps(event, sort_keys=True) + "\n")
        return path


def load(path: Path) -> list[Event]:
    """A history written by ``dump``: the checker runs on it as on a live one."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
