"""Where the admin token comes from, and an API that asks for none refusing to listen beyond
this machine unless told --insecure (and then saying so loudly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, serve_args
from tests.e2e.test_auth import ADMIN, bearer
from tests.e2e.test_cli import run
from tests.helpers import Node, free_port_range, http


def args(tmp_path: Path, *extra: str, api: str = "127.0.0.1:0") -> list[str]:
    lo, hi = free_port_range()
    base = serve_args(tmp_path / "restcp.db", lo, hi, *extra)
    base[base.index("--api") + 1] = api
    return base


def asks_for(node: Node, token: str) -> None:
    assert node.call("GET", "/apps").status == 401
    assert node.call("GET", "/apps", headers=bearer(token)).status == 200


def test_token_from_a_file(start_node: StartNode, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(ADMIN + "\n")  # as `echo TOKEN > file` writes it
    asks_for(start_node(*args(tmp_path, "--api-token-file", str(path))), ADMIN)


def test_token_from_the_environment(start_node: StartNode, tmp_path: Path) -> None:
    asks_for(start_node(*args(tmp_path), env={"RESTCP_API_TOKEN": ADMIN}), ADMIN)


def test_token_file_from_the_environment(start_node: StartNode, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(ADMIN)
    asks_for(start_node(*args(tmp_path), env={"RESTCP_API_TOKEN_FILE": str(path)}), ADMIN)


def test_a_flag_beats_a_variable(start_node: StartNode, tmp_path: Path) -> None:
    other = "another-admin-token-0123"
    asks_for(
        start_node(*args(tmp_path, "--api-token", ADMIN), env={"RESTCP_API_TOKEN": other}), ADMIN
    )


BAD_TOKENS = [
    ("too-short", ["--api-token", "short"], {}, "at least 16"),
    ("space", ["--api-token", "a token with spaces"], {}, "may only contain"),
    ("colon", ["--api-token", "abcdefgh:ijklmnopq"], {}, "may only contain"),
    ("empty-flag", ["--api-token", ""], {}, "may only contain"),
    ("env-short", [], {"RESTCP_API_TOKEN": "short"}, "RESTCP_API_TOKEN"),
    ("both", ["--api-token", ADMIN, "--api-token-file", "/etc/hostname"], {}, "not both"),
    ("both-env", [], {"RESTCP_API_TOKEN": ADMIN, "RESTCP_API_TOKEN_FILE": "/x"}, "not both"),
    ("missing-file", ["--api-token-file", "/nonexistent/token"], {}, "cannot read"),
    ("directory", ["--api-token-file", "/"], {}, "cannot read"),
    ("huge-file", ["--api-token-file", "/dev/zero"], {}, "--api-token-file"),
    ("metrics-alone", ["--metrics-token", "metrics-token-0123456"], {}, "needs --api-token"),
    ("metrics-short", ["--api-token", ADMIN, "--metrics-token", "short"], {}, "--metrics-token"),
    ("metrics-is-admin", ["--api-token", ADMIN, "--metrics-token", ADMIN], {}, "must not be"),
    ("metrics-both", ["--api-token", ADMIN, "--metrics-token", "metrics-token-0123456",
                      "--metrics-token-file", "/etc/hostname"], {}, "not both"),
    ("metrics-missing-file", ["--api-token", ADMIN, "--metrics-token-file", "/nonexistent"], {},
     "--metrics-token-file /nonexistent: cannot read"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "env", "mentions"), [pytest.param(*c[1:], id=c[0]) for c in BAD_TOKENS]
)
def test_bad_tokens_are_refused_clearly(
    tmp_path: Path, extra: list[str], env: dict[str, str], mentions: str
) -> None:
    done = run(["serve", *extra], tmp_path, env)
    assert done.returncode != 0
    assert mentions in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert " ready api=" not in done.stderr
    # Refusing a token does not print it.
    for value in (*extra, *env.values()):
        if len(value) >= 16 and not value.startswith(("/", "--")):
            assert value not in done.stderr


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    done = run(["serve", "--api-token-file", str(tmp_path / "token")], tmp_path)
    assert done.returncode != 0
    assert "--api-token-file" in done.stderr, done.stderr


def test_the_token_is_not_shown_in_help(tmp_path: Path) -> None:
    done = run(["serve", "--help"], tmp_path, {"RESTCP_API_TOKEN": ADMIN})
    assert done.returncode == 0
    assert ADMIN not in done.stdout


@pytest.mark.parametrize("api", ["0.0.0.0:0", "[::]:0"])
def test_no_token_beyond_loopback_is_refused(tmp_path: Path, api: str) -> None:
    done = run(["serve", "--api", api], tmp_path)
    assert done.returncode != 0
    assert "--api-token" in done.stderr, done.stderr
    assert "--insecure" in done.stderr, done.stderr
    assert " ready api=" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("api", ["0.0.0.0:0", "[::]:0"])
def test_insecure_serves_beyond_loopback_with_a_loud_warning(
    start_node: StartNode, tmp_path: Path, api: str
) -> None:
    node = start_node(*args(tmp_path, "--insecure", api=api))
    warning = node.wait_for_line("WARNING")
    assert "INSECURE" in warning
    assert "no token" in warning
    # It serves, without a token, on loopback as on every address.
    host = "127.0.0.1" if api.startswith("0") else "[::1]"
    assert http("GET", f"http://{host}:{node.api_port}/apps").status == 200


def test_insecure_from_the_environment(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node(*args(tmp_path, api="0.0.0.0:0"), env={"RESTCP_INSECURE": "1"})
    assert "INSECURE" in node.wait_for_line("WARNING")


def test_a_token_needs_no_insecure_and_gets_no_warning(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(*args(tmp_path, "--api-token", ADMIN, api="0.0.0.0:0"))
    asks_for(node, ADMIN)
    assert not [line for line in node.lines if "WARNING" in line or "INSECURE" in line]


def test_loopback_needs_neither(start_node: StartNode, tmp_path: Path) -> None:
    for api in ("127.0.0.1:0", "[::1]:0", "127.0.0.2:0", "localhost:0"):
        node = start_node(*args(tmp_path, api=api))
        assert node.call("GET", "/apps").status == 200
        assert not [line for line in node.lines if "INSECURE" in line]
        node.stop()
