"""Who a node is: a stable name and an incarnation, and the proof that an earlier
incarnation of this node's name is gone.

A node id is ``<name>@<pid>.<start>.<host>``::

    web-3@2471.8834210.9f0c1e2a
    │     │    │       └ this boot of this machine, with the process's pid and network
    │     │    │         namespaces (8 hex digits of their hash)
    │     │    └ when the process started, in clock ticks after boot (/proc/<pid>/stat)
    │     └ the process id
    └ --node-name (the host name by default): the same across restarts

The name is what stays when a node is restarted; the rest is the incarnation, one process.
A lease names the whole id, so a node that finds its lease held by an id of its own name and
host can tell from /proc whether that process still runs: a pid that is gone, or that is
another process now (its start time differs), proves it dead. The host part keeps a node from
judging a process of another machine, or of another container, by its own /proc: on
another host the lease is waited out, as before names existed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

# A node id; the name's characters are settings.parse_node_name's.
_ID = re.compile(
    r"(?P<name>[A-Za-z0-9._-]{1,64})@(?P<pid>[0-9]+)\.(?P<start>[0-9]+)\.(?P<host>[0-9a-f]{8})"
)


@dataclass(frozen=True, slots=True)
class NodeId:
    """One incarnation of a named node."""

    name: str
    pid: int
    start: int
    host: str

    def __str__(self) -> str:
        return f"{self.name}@{self.pid}.{self.start}.{self.host}"

    @classmethod
    def parse(cls, text: str) -> NodeId | None:
        """The id ``text`` names; None for anything else (a lease set by hand, an id of an
        older restcp)."""
        match = _ID.fullmatch(text)
        if match is None:
            return None
        return cls(match["name"], int(match["pid"]), int(match["start"]), match["host"])

    @classmethod
    def this_process(cls, name: str) -> NodeId:
        pid = os.getpid()
        start = _start_time(pid)
        if start is None:
            # No /proc: an id nobody can prove dead, which waits out its leases as before.
            return cls(name, pid, secrets.randbits(48), secrets.token_hex(4))
        return cls(name, pid, start, _host())

    def predecessor(self, other: NodeId) -> bool:
        """Whether ``other`` is another incarnation of this node's name on this host."""
        return other != self and other.name == self.name and other.host == self.host

    def alive(self) -> bool:
        """Whether this incarnation's process runs (asked on its host: see predecessor)."""
        return _start_time(self.pid) == self.start


def _start_time(pid: int) -> int | None:
    """The process's start, in clock ticks after boot: field 22 of /proc/<pid>/stat, whose
    second field (the command, in parentheses) may hold spaces and parentheses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _host() -> str:
    """This boot of this machine, and this process's pid and network namespaces: a pid
    means the same process, and a port the same socket, only where all three are equal."""
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts += [os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "net")]
    except OSError:
        return secrets.token_hex(4)  # unknown: another host to everyone
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
