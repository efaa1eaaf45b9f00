"""The pytest plugin (restcp/pytest_plugin.py), run the way its users run it: pytest on test
files of theirs (pytester, in a subprocess: the plugin comes in through its entry point),
with a real restcp started by the plugin or one already running, under pytest-xdist, and
the redis-py examples of docs/pytest.md (an outage; a latency and a reset_peer toxic) run
as they are written there, against a real redis-server."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from restcp.client import Client, NotFound
from tests.e2e.conftest import StartNode, serve_args
from tests.helpers import Node, free_port_range
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# A test file of a user: traffic through restcp_proxy, cleanup between tests, its own
# fixture from restcp_proxy_fixture. Each test writes what it saw to $SEEN/<test>.json.
USER_TESTS = """
import json, os, socket
import pytest
from restcp.pytest_plugin import restcp_proxy_fixture

UPSTREAM = socket.create_server(("127.0.0.1", 0))
through_restcp = restcp_proxy_fixture("127.0.0.1", UPSTREAM.getsockname()[1], app="own",
                                      idle_timeout=30)


def relay(proxy):
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as conn:
        conn.sendall(b"ping")
        served, _ = UPSTREAM.accept()
        with served:
            assert served.recv(4) == b"ping"
            served.sendall(b"pong")
            assert conn.recv(4) == b"pong"


def seen(request, restcp_proc, **more):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    name = request.node.name + ("" if worker is None else "@" + worker)
    pid = None if restcp_proc.process is None else restcp_proc.process.pid
    with open(os.path.join(os.environ["SEEN"], name + ".json"), "w") as f:
        json.dump({"url": restcp_proc.url, "pid": pid, "worker": worker, **more}, f)


def test_proxy(request, restcp_proxy, restcp_proc):
    proxy = restcp_proxy("127.0.0.1:%d" % UPSTREAM.getsockname()[1])
    assert proxy.url == "tcp://%s:%d/" % (proxy.host, proxy.port)
    assert [b.port for b in proxy.info.backends] == [UPSTREAM.getsockname()[1]]
    relay(proxy)
    seen(request, restcp_proc, route=[proxy.app, proxy.id])


def test_routes_of_the_test_before_are_gone(request, restcp, restcp_proc):
    mine = [(a.app, r.id) for a in restcp.apps() for r in restcp.routes(a.app).list()]
    seen(request, restcp_proc, routes=mine)
    restcp.routes("mine").create()


def test_own_fixture(request, through_restcp, restcp_proc):
    assert (through_restcp.app, through_restcp.info.idle_timeout) == ("own", 30)
    relay(through_restcp)
    with through_restcp.backends[1].disabled():
        with socket.create_connection((through_restcp.host, through_restcp.port)) as conn:
            assert conn.recv(1) == b""  # accepted, then closed: nothing to relay to
    relay(through_restcp)
    seen(request, restcp_proc, route=[through_restcp.app, through_restcp.id])
"""


def run_user_tests(
    pytester: pytest.Pytester, tmp_path: Path, *args: str
) -> tuple[pytest.RunResult, dict[str, dict[str, object]]]:
    """pytest ARGS on the user's tests, in a subprocess; and what each test saw."""
    seen = tmp_path / "seen"
    shutil.rmtree(seen, ignore_errors=True)
    seen.mkdir()
    pytester.makepyfile(test_user=USER_TESTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEEN", str(seen))
        # Not one of this run's xdist workers, if it has some: the user's tests name their
        # files by the worker they run on.
        patch.delenv("PYTEST_XDIST_WORKER", raising=False)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    return result, {p.stem: json.loads(p.read_text()) for p in seen.glob("*.json")}


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_a_suite_gets_its_own_restcp_proxies_and_clean_routes(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result, seen = run_user_tests(pytester, tmp_path, "-v")
    result.assert_outcomes(passed=3)
    # One restcp for the session, stopped at its end.
    assert len({(s["url"], s["pid"]) for s in seen.values()}) == 1
    pid = seen["test_proxy"]["pid"]
    assert isinstance(pid, int)
    assert gone(pid)
    # The route of the first test was deleted after it.
    assert seen["test_routes_of_the_test_before_are_gone"]["routes"] == []


# Under xdist: each worker makes a route and holds it until the other worker's route is
# there too, so that both restcps serve a route at once; it writes what it has to
# $SEEN/together@<worker>.json and reads the other's.
TOGETHER = """
import json, os, socket, time


def test_together(restcp, restcp_proc):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    route = restcp.routes("together").create()
    mine = {"url": restcp_proc.url, "pid": restcp_proc.process.pid, "worker": worker,
            "port": route.port}
    path = os.path.join(os.environ["SEEN"], "together@%s.json" % worker)
    with open(path + ".tmp", "w") as f:
        json.dump(mine, f)
    os.rename(path + ".tmp", path)  # whole, or not there yet
    them = "gw1" if worker == "gw0" else "gw0"
    other = os.path.join(os.environ["SEEN"], "together@%s.json" % them)
    deadline = time.monotonic() + 60
    while not os.path.exists(other):
        assert time.monotonic() < deadline, "the other worker never made its route"
        time.sleep(0.02)
    with open(other) as f:
        theirs = json.load(f)
    assert theirs["port"] != route.port
    with socket.create_connection((route.host, route.port), timeout=5):
        pass  # accepted: this worker's route is its own restcp's
"""


def api_port(url: object) -> int:
    assert isinstance(url, str), url
    assert url.startswith("http://127.0.0.1:"), url
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def test_xdist_gives_each_worker_its_own_restcp(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # Every worker runs both files (--dist each): both make routes and relay at once.
    pytester.makepyfile(test_together=TOGETHER)
    result, seen = run_user_tests(pytester, tmp_path, "-n", "2", "--dist", "each")
    result.assert_outcomes(passed=8)
    assert len(seen) == 8
    restcps = {}
    for record in seen.values():
        restcps.setdefault(record["worker"], set()).add((record["url"], record["pid"]))
    assert set(restcps) == {"gw0", "gw1"}
    (first,), (second,) = restcps.values()
    # Two restcps, one per worker, their APIs on ports of their own.
    assert api_port(first[0]) != api_port(second[0])
    assert first[1] != second[1]
    # Their routes, served at the same time, on ports of their own.
    ports = {seen[f"together@{worker}"]["port"] for worker in ("gw0", "gw1")}
    assert len(ports) == 2
    for worker in ("gw0", "gw1"):
        assert seen[f"test_routes_of_the_test_before_are_gone@{worker}"]["routes"] == []
    for _, pid in (first, second):
        assert isinstance(pid, int)
        assert gone(pid)


def test_a_restcp_that_cannot_start_fails_its_tests_saying_why(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result, _ = run_user_tests(pytester, tmp_path, "--restcp-exec", str(tmp_path / "missing"))
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [f"*restcp could not start*cannot run '{tmp_path / 'missing'}'*No such file*"]
    )
    assert "Traceback" not in result.stdout.str()

    script = tmp_path / "broken-restcp"
    script.write_text("#!/bin/sh\necho 'error: this restcp is broken' >&2\nexit 3\n")
    script.chmod(0o755)
    pytester.makeini(f"[pytest]\nrestcp_exec = {script}\n")
    result, _ = run_user_tests(pytester, tmp_path)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        ["*restcp could not start*it exited with status 3*", "*error: this restcp is broken*"]
    )

    # A restcp whose log ends a while before it exits: its status is still the one said.
    script.write_text("#!/bin/sh\necho 'error: closing up' >&2\nexec 2>&-\nsleep 0.5\nexit 4\n")
    result, _ = run_user_tests(pytester, tmp_path)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        ["*restcp could not start*it exited with status 4*", "*error: closing up*"]
    )


def test_a_running_restcp_is_used_and_its_routes_are_left_alone(
    pytester: pytest.Pytester, tmp_path: Path, start_node: StartNode
) -> None:
    token = "plugin-admin-token-0123456789"
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--api-token", token))
    with Client(node.api, token) as client:
        kept = client.routes("kept").create()
        result, seen = run_user_tests(
            pytester, tmp_path, "--restcp-url", node.api, "--restcp-token", token
        )
        result.assert_outcomes(passed=3)
        assert {s["url"] for s in seen.values()} == {node.api}
        assert {s["pid"] for s in seen.values()} == {None}
        # The test saw the route that was there before it, and deleted only its own.
        assert seen["test_routes_of_the_test_before_are_gone"]["routes"] == [["kept", 1]]
        assert [r.id for r in client.routes("kept").list()] == [kept.id]
        for app, route_id in (seen["test_proxy"]["route"], seen["test_own_fixture"]["route"]):
            with pytest.raises(NotFound):
                client.routes(str(app))[int(str(route_id))].refresh()
        assert client.routes("mine").list() == []

        # The same from the ini file; without the token, the API refuses.
        pytester.makeini(f"[pytest]\nrestcp_url = {node.api}\n")
        result, _ = run_user_tests(pytester, tmp_path)
        result.assert_outcomes(errors=3)
        result.stdout.fnmatch_lines(
            [f"*--restcp-url {node.api} refuses the plugin*401*Give its admin token*"]
        )


def test_nothing_running_at_restcp_url_is_said_clearly(
    pytester: pytest.Pytester, tmp_path: Path, node: Node
) -> None:
    url = node.api
    node.stop()
    result, _ = run_user_tests(pytester, tmp_path, "--restcp-url", url)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([f"*--restcp-url {url} does not answer /healthz*cannot reach*"])


def docs_example(name: str) -> str:
    """The code block of docs/pytest.md marked ``<!-- example: NAME ...-->``."""
    text = (ROOT / "docs" / "pytest.md").read_text()
    # The name whole: "redis" is not the start of "redis-toxics".
    marker = rf"<!-- example: {re.escape(name)}(?:\s[^\n]*?)?-->"
    found = re.search(marker + r"\n```python\n(.*?)```", text, re.S)
    assert found, f"docs/pytest.md has no example {name!r}"
    return found.group(1)


# docs/pytest.md's redis-py examples, and how many tests each has.
REDIS_EXAMPLES = [("redis", 1), ("redis-toxics", 2)]


@pytest.mark.parametrize(("example", "tests"), REDIS_EXAMPLES)
def test_the_redis_examples_of_the_docs_pass_against_a_real_redis(
    pytester: pytest.Pytester, tmp_path: Path, example: str, tests: int
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        pytester.makeconftest(
            f"""
import pytest

@pytest.fixture
def redis_port():
    return {redis_server.port}
"""
        )
        pytester.makepyfile(test_redis=docs_example(example))
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=120)
    result.assert_outcomes(passed=tests)


def test_the_plugin_is_found_through_its_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--restcp-exec=EXEC*", "*--restcp-url=URL*", "*restcp_url*"])
