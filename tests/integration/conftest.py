from __future__ import annotations

import pytest

from tests.integration.harness import LOOPS


@pytest.fixture(params=list(LOOPS))
def loop(request: pytest.FixtureRequest) -> str:
    """The event loop a test runs on; a test that is only worth running on uvloop (what
    production uses) narrows it with ``@pytest.mark.parametrize("loop", ["uvloop"])``."""
    name: str = request.param
    return name
