from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restcp.core.health import (
    BackendHealth,
    Health,
    Step,
    check_failed,
    check_passed,
    connect_failed,
    connect_succeeded,
    cooldown_over,
    initial,
)

RISE, FALL = 2, 3


def passes(health: BackendHealth, n: int, now: float = 0.0, rise: int = RISE) -> BackendHealth:
    for i in range(n):
        health = check_passed(health, now + i, rise).health
    return health


def fails(health: BackendHealth, n: int, now: float = 0.0, fall: int = FALL) -> BackendHealth:
    for i in range(n):
        health = check_failed(health, now + i, fall, "refused").health
    return health


def up() -> BackendHealth:
    health = check_passed(BackendHealth(), 0.0, RISE).health
    assert health.state == "up"
    return health


def down() -> BackendHealth:
    health = check_failed(BackendHealth(), 0.0, FALL, "refused").health
    assert health.state == "down"
    return health


# Active checks -------------------------------------------------------------------------


def test_a_new_backend_is_unknown_and_usable() -> None:
    health = BackendHealth()
    assert health.state == "unknown"
    assert health.usable


def test_unknown_goes_up_on_the_first_pass() -> None:
    step = check_passed(BackendHealth(), 5.0, rise=3)
    assert step.changed
    assert step.health.state == "up"
    assert step.health.changed_at == 5.0


def test_unknown_goes_down_on_the_first_fail() -> None:
    step = check_failed(BackendHealth(), 7.0, fall=3, reason="connection refused")
    assert step.changed
    assert step.health.state == "down"
    assert step.health.changed_at == 7.0
    assert "connection refused" in step.health.reason


@pytest.mark.parametrize("fall", [1, 2, 3, 5])
def test_up_goes_down_at_the_fall_th_failure_in_a_row(fall: int) -> None:
    health = up()
    for i in range(fall - 1):
        step = check_failed(health, 10.0 + i, fall, "timeout")
        assert not step.changed
        health = step.health
        assert health.state == "up"
    step = check_failed(health, 20.0, fall, "timeout")
    assert step.changed
    assert step.health.state == "down"
    assert step.health.changed_at == 20.0
    assert "timeout" in step.health.reason


def test_a_pass_between_failures_restarts_the_fall_count() -> None:
    health = fails(up(), FALL - 1)
    health = check_passed(health, 10.0, RISE).health
    health = fails(health, FALL - 1, now=11.0)
    assert health.state == "up"
    step = check_failed(health, 20.0, FALL, "timeout")
    assert step.changed
    assert step.health.state == "down"


@pytest.mark.parametrize("rise", [1, 2, 4])
def test_down_needs_rise_passes_in_a_row(rise: int) -> None:
    health = down()
    for i in range(rise - 1):
        step = check_passed(health, 10.0 + i, rise)
        assert not step.changed
        health = step.health
        assert health.state == "down"
    step = check_passed(health, 20.0, rise)
    assert step.changed
    assert step.health.state == "up"
    assert step.health.changed_at == 20.0


def test_a_failure_between_passes_restarts_the_rise_count() -> None:
    rise = 3
    health = passes(down(), rise - 1, rise=rise)
    health = check_failed(health, 10.0, FALL, "timeout").health
    health = passes(health, rise - 1, now=11.0, rise=rise)
    assert health.state == "down"
    assert check_passed(health, 20.0, rise).health.state == "up"


def test_steady_results_report_no_change() -> None:
    health = up()
    for i in range(20):
        step = check_passed(health, 1.0 + i, RISE)
        assert not step.changed
        assert step.health.changed_at == 0.0
        health = step.health
    health = fails(health, FALL)
    assert health.state == "down"
    for i in range(20):
        step = check_failed(health, 100.0 + i, FALL, "refused")
        assert not step.changed
        health = step.health


# A reference model written from the rules, to compare the real machine against on random
# event sequences.

Event = tuple[Literal["pass", "fail", "connect_fail", "connect_ok", "cooldown"], float]


@dataclass
class Model:
    rise: int
    fall: int
    passive_fall: int
    state: Health = "unknown"
    passes: int = 0
    fails: int = 0
    connect_fails: int = 0

    def apply(self, kind: str) -> None:
        if kind == "pass":
            self.passes += 1
            self.fails = 0
            self.connect_fails = 0
            if self.state == "unknown" or (self.state == "down" and self.passes >= self.rise):
                self.state = "up"
        elif kind == "fail":
            self.fails += 1
            self.passes = 0
            if self.state == "unknown" or (self.state == "up" and self.fails >= self.fall):
                self.state = "down"
        elif kind == "connect_fail":
            self.connect_fails += 1
            if (
                self.passive_fall
                and self.state != "down"
                and self.connect_fails >= self.passive_fall
            ):
                self.state = "down"
                # Coming back from a passive down takes `rise` fresh passes.
                self.passes = 0
        elif kind == "connect_ok":
            self.connect_fails = 0
        elif kind == "cooldown" and self.state == "down":
            self.state = "unknown"
            self.connect_fails = 0


def apply(health: BackendHealth, kind: str, now: float, model: Model) -> Step:
    if kind == "pass":
        return check_passed(health, now, model.rise)
    if kind == "fail":
        return check_failed(health, now, model.fall, "refused")
    if kind == "connect_fail":
        return connect_failed(health, now, model.passive_fall, "reset")
    if kind == "connect_ok":
        return Step(connect_succeeded(health), False)
    return cooldown_over(health, now)


events = st.lists(
    st.sampled_from(["pass", "fail", "connect_fail", "connect_ok", "cooldown"]),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300)
@given(
    kinds=events,
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    passive_fall=st.integers(0, 4),
    start=st.sampled_from(["unknown", "up", "down"]),
)
def test_changed_is_reported_once_per_transition(
    kinds: list[str], rise: int, fall: int, passive_fall: int, start: Health
) -> None:
    model = Model(rise, fall, passive_fall, state=start)
    health = initial(start, 0.0)
    transitions = changes = 0
    for t, kind in enumerate(kinds, start=1):
        now = float(t)
        before = health
        step = apply(health, kind, now, model)
        model.apply(kind)
        health = step.health
        assert health.state == model.state, (kind, before, health)
        assert health.usable == (health.state != "down")
        if health.state != before.state:
            transitions += 1
            assert step.changed
            assert health.changed_at == now
            assert health.reason
        else:
            assert not step.changed
            # Only a transition stamps the time and the reason: callers log on them.
            assert health.changed_at == before.changed_at
            assert health.reason == before.reason
        changes += step.changed
    assert changes == transitions


# Passive health ------------------------------------------------------------------------


@pytest.mark.parametrize("passive_fall", [1, 3])
def test_connect_failures_in_a_row_mark_an_up_backend_down_at_once(passive_fall: int) -> None:
    health = passes(up(), 5)
    for i in range(passive_fall - 1):
        step = connect_failed(health, 10.0 + i, passive_fall, "refused")
        assert not step.changed
        health = step.health
        assert health.state == "up"
    step = connect_failed(health, 30.0, passive_fall, "refused")
    assert step.changed
    assert step.health.state == "down"
    assert step.health.changed_at == 30.0
    assert "refused" in step.health.reason
    # Active checks must then earn the way back with `rise` passes, not one.
    health = step.health
    for i in range(RISE - 1):
        health = check_passed(health, 40.0 + i, RISE).health
        assert health.state == "down"
    assert check_passed(health, 50.0, RISE).health.state == "up"


def test_connect_failures_mark_an_unknown_backend_down() -> None:
    health = BackendHealth()
    for i in range(3):
        health = connect_failed(health, float(i), 3, "refused").health
    assert health.state == "down"


def test_passive_fall_zero_disables_passive_health() -> None:
    health = up()
    for i in range(100):
        step = connect_failed(health, float(i), 0, "refused")
        assert not step.changed
        health = step.health
    assert health.state == "up"


def test_a_successful_connect_restarts_the_passive_count() -> None:
    health = up()
    for _ in range(5):
        health = connect_failed(health, 1.0, 3, "refused").health
        health = connect_failed(health, 2.0, 3, "refused").health
        health = connect_succeeded(health)
    assert health.state == "up"
    assert connect_failed(health, 3.0, 3, "refused").health.state == "up"


def test_connect_succeeded_keeps_the_same_value_when_nothing_to_reset() -> None:
    health = up()
    assert connect_succeeded(health) == health


def test_cooldown_returns_a_passively_downed_backend_to_unknown() -> None:
    health = BackendHealth()
    for i in range(3):
        health = connect_failed(health, float(i), 3, "refused").health
    assert not health.usable
    step = cooldown_over(health, 60.0)
    assert step.changed
    assert step.health.state == "unknown"
    assert step.health.usable
    assert step.health.changed_at == 60.0
    # The count starts afresh: one more failure is not enough to go down again.
    again = connect_failed(step.health, 61.0, 3, "refused")
    assert not again.changed
    assert again.health.state == "unknown"


@pytest.mark.parametrize("state", ["unknown", "up"])
def test_cooldown_leaves_a_usable_backend_alone(state: Health) -> None:
    health = initial(state, 0.0)
    step = cooldown_over(health, 60.0)
    assert not step.changed
    assert step.health == health


# initial() and usable ------------------------------------------------------------------


@pytest.mark.parametrize(("state", "usable"), [("unknown", True), ("up", True), ("down", False)])
def test_initial_state(state: Health, usable: bool) -> None:
    health = initial(state, 12.5)
    assert health.state == state
    assert health.usable is usable
    assert health.changed_at == 12.5
    assert health.reason
    assert (health.successes, health.failures, health.passive_failures) == (0, 0, 0)


def test_initial_down_needs_rise_passes() -> None:
    health = initial("down", 0.0)
    health = passes(health, RISE - 1)
    assert health.state == "down"
    assert check_passed(health, 99.0, RISE).health.state == "up"


def test_initial_up_needs_fall_failures() -> None:
    health = fails(initial("up", 0.0), FALL - 1)
    assert health.state == "up"
    assert check_failed(health, 99.0, FALL, "refused").health.state == "down"
