"""The rise/fall state machine of one backend's health (HAProxy's semantics).

    unknown ──first check passes──► up ──`fall` checks fail in a row──► down
       │                             ▲                                    │
       └──first check fails──► down ─┴──`rise` checks pass in a row───────┘

Passive health runs beside it: ``passive_fall`` connect failures in a row on real traffic
mark an up (or unknown) backend down at once; the active checks bring it back, or, when a
route has no active checks, the end of a cool-down returns it to ``unknown`` (usable).
A backend in ``unknown`` takes traffic: a new backend is usable before its first check.

Everything here is a pure function of the previous value, the event and the time, so the
whole machine is unit-tested with a fake clock. Callers log when ``changed`` is True, which
happens once per transition, never once per interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Health = Literal["unknown", "up", "down"]


@dataclass(frozen=True, slots=True)
class BackendHealth:
    state: Health = "unknown"
    successes: int = 0  # consecutive passed checks
    failures: int = 0  # consecutive failed checks
    passive_failures: int = 0  # consecutive failed connects of real clients
    changed_at: float | None = None
    reason: str = ""
    # The last active check: when (Unix seconds), whether it passed, and why it failed.
    checked_at: float | None = None
    check_ok: bool | None = None
    check_reason: str = ""

    @property
    def usable(self) -> bool:
        return self.state != "down"


@dataclass(frozen=True, slots=True)
class Step:
    health: BackendHealth
    changed: bool


def initial(state: Health, now: float) -> BackendHealth:
    return BackendHealth(state=state, changed_at=now, reason="initial state")


def _to(health: BackendHealth, state: Health, now: float, reason: str) -> Step:
    if health.state == state:
        return Step(health, False)
    return Step(replace(health, state=state, changed_at=now, reason=reason), True)


def check_passed(health: BackendHealth, now: float, rise: int) -> Step:
    health = replace(
        health,
        successes=health.successes + 1,
        failures=0,
        passive_failures=0,
        checked_at=now,
        check_ok=True,
        check_reason="",
    )
    if health.state == "unknown" or (health.state == "down" and health.successes >= rise):
        return _to(health, "up", now, f"{health.successes} check(s) passed")
    return Step(health, False)


def check_failed(health: BackendHealth, now: float, fall: int, reason: str) -> Step:
    health = replace(
        health,
        failures=health.failures + 1,
        successes=0,
        checked_at=now,
        check_ok=False,
        check_reason=reason,
    )
    if health.state == "unknown" or (health.state == "up" and health.failures >= fall):
        return _to(health, "down", now, f"check failed: {reason}")
    return Step(health, False)


def connect_failed(health: BackendHealth, now: float, passive_fall: int, reason: str) -> Step:
    """A real client could not connect; ``passive_fall`` 0 turns passive health off."""
    health = replace(health, passive_failures=health.passive_failures + 1)
    if passive_fall and health.state != "down" and health.passive_failures >= passive_fall:
        return _to(
            replace(health, successes=0),
            "down",
            now,
            f"{health.passive_failures} connect failures in a row: {reason}",
        )
    return Step(health, False)


def connect_succeeded(health: BackendHealth) -> BackendHealth:
    if health.passive_failures == 0:
        return health
    return replace(health, passive_failures=0)


def cooldown_over(health: BackendHealth, now: float) -> Step:
    """Without active checks, a passively downed backend is given another chance."""
    if health.state != "down":
        return Step(health, False)
    return _to(replace(health, passive_failures=0), "unknown", now, "cool-down over")
