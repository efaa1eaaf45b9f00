"""Schemathesis's command line against a node, as a user runs it on the document the node
serves: `st run http://.../openapi.json --checks all`, every phase (examples, coverage,
fuzzing, and the stateful phase that follows the document's links), on a node without tokens
and on one with. It finds nothing: no 5xx, no answer that contradicts the document, no
request the document calls invalid accepted nor one it calls valid refused, no auth ignored.

A bounded number of cases per operation keeps each run under a minute; the pytest-driven
runs of tests/e2e/test_openapi.py also check that refusals change nothing in the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, assert_clean_log, serve_args
from tests.e2e.test_auth import ADMIN
from tests.helpers import free_port_range

ROOT = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).with_name("st")
EXAMPLES = 20


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [False, True], ids=["without-tokens", "with-tokens"])
def test_st_run_checks_all_finds_nothing(
    tokens: bool, start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range(200)
    auth = ["--api-token", ADMIN] if tokens else []
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, *auth))
    # With tokens, schemathesis sends the admin token as the document's bearer scheme, and
    # leaves it out where it checks that a request without one is refused.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[auth.openapi.bearer]\nbearer = "{ADMIN}"\n' if tokens else "")
    done = subprocess.run(
        [
            str(ST), "--config-file", str(config), "run", f"{node.api}/openapi.json",
            "--checks", "all",
            # Streams that do not end: tests/e2e/test_stats_api.py reads them.
            "--exclude-path-regex", r"/events$",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(EXAMPLES),
            "--workers", "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # Hypothesis keeps its database there, not in the project
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.e2e.openapi_hooks",
        },
        check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out
    # Every operation of the document: the endpoints' table, HEAD aside.
    assert "Tested: 40" in out, out
    assert node.stop() == 0
    assert_clean_log(node)
