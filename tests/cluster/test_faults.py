"""The randomized fault run (tests/faults), about a minute of it: three nodes and Redis
killed, paused and cut off from pub/sub while writers write through random nodes and check
each 2xx at once. A failure prints the seed and where the history was written; replay it
with RESTCP_FAULT_SEED=<seed>, or longer: ``python -m tests.faults.run --seed <seed>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.run import run, seed_from_env

DURATION = 45.0


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_a_minute_of_faults_loses_no_acknowledged_write(tmp_path: Path) -> None:
    seed = seed_from_env()
    print(f"fault run seed {seed}")
    result = run(seed, DURATION, tmp_path)
    print(result.summary())
    assert not result.report.anomalies, result.summary()
    stats = result.report.stats
    # The run did what it is for: writes answered and checked at once, and every fault.
    assert stats["outcomes"].get("ok", 0) >= 50, result.summary()
    assert stats["ryw_passed"] >= 30, result.summary()
    assert stats["steady_connections"] >= 100, result.summary()
    assert all(result.faults.values()), result.summary()
