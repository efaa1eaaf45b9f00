"""toxiproxy's REST API (``--toxiproxy-api``) on a real node, driven by the clients
toxiproxy's users have: ``toxiproxy-python`` (PyPI) and ``toxiproxy-node-client`` (npm, run
by Node.js). Each proxy is a named route of the toxiproxy app, so restcp's own API sees
what they did; toxiproxy's shapes and status codes are checked with plain HTTP; its
``-config`` file is read at start; proxies and toxics survive a restart."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import toxiproxy  # type: ignore[import-untyped]

from tests.e2e.conftest import StartNode, assert_clean_log, serve_args
from tests.e2e.peers import Backend, echo
from tests.helpers import Node, Response, free_port_range, http

NODE_PROJECT = Path(__file__).resolve().parent / "toxiproxy_node"
# A round trip on loopback with no toxic takes well under this, even on a loaded machine;
# with a latency L it takes L (less the loop's 1 ms, MS) to L + SLACK.
SLACK = 0.25
MS = 0.001


def start(start_node: StartNode, store: Path, *extra: str) -> tuple[Node, str]:
    """A node serving toxiproxy's API on a free port; (node, the API's base URL)."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(store, lo, hi, "--toxiproxy-api", "127.0.0.1:0", *extra))
    line = node.wait_for_line(" toxiproxy api=")
    return node, line.split(" toxiproxy api=")[1].split()[0].rstrip("/")


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend(echo) as server:
        yield server


def call(base: str, method: str, path: str, body: Any = None) -> Response:
    return http(method, base + path, body)


def proxies_of(node: Node) -> dict[str, dict[str, Any]]:
    """restcp's view: the toxiproxy app's routes, by name."""
    routes = node.call("GET", "/apps/toxiproxy/routes")
    assert routes.status == 200, routes
    return {r["name"]: r for r in routes.json()}


def roundtrip(port: int, payload: bytes = b"ping\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


# -- toxiproxy-python ----------------------------------------------------------------------


def test_the_python_client_drives_restcp(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    host, port = base.removeprefix("http://").rsplit(":", 1)
    server = toxiproxy.Toxiproxy()
    server.update_api_consumer(host, int(port))
    assert server.running()
    assert json.loads(server.version()) == {"version": "restcp 0.1.0"}

    upstream = f"127.0.0.1:{backend.port}"
    proxy = server.create(upstream=upstream, name="db")
    assert (proxy.name, proxy.upstream, proxy.enabled) == ("db", upstream, True)
    listen_port = int(proxy.listen.rsplit(":", 1)[1])
    assert proxy.listen == f"127.0.0.1:{listen_port}"
    assert roundtrip(listen_port) == b"ping\n"
    with pytest.raises(toxiproxy.exceptions.ProxyExists):
        server.create(upstream=upstream, name="db")
    # The client checks its list first; the server refuses a taken name all the same.
    with pytest.raises(toxiproxy.exceptions.ProxyExists):
        toxiproxy.api.APIConsumer.post("/proxies", json={"name": "db", "upstream": upstream})

    proxy.add_toxic(type="latency", attributes={"latency": 300, "jitter": 5})
    proxy.add_toxic(name="cut", type="limit_data", stream="upstream", attributes={"bytes": 64})
    toxics = proxy.toxics()
    assert sorted(toxics) == ["cut", "latency_downstream"]
    slow = toxics["latency_downstream"]
    assert (slow.type, slow.stream, slow.toxicity, slow.attributes) == (
        "latency",
        "downstream",
        1.0,
        {"latency": 300, "jitter": 5},
    )
    with pytest.raises(toxiproxy.exceptions.InvalidToxic):
        proxy.add_toxic(type="no_such_type")
    with pytest.raises(toxiproxy.exceptions.InvalidToxic):
        proxy.add_toxic(type="latency", stream="sideways")
    with pytest.raises(toxiproxy.exceptions.ProxyExists):
        proxy.add_toxic(type="latency")

    # restcp's own API shows the same route and toxics.
    route = proxies_of(node)["db"]
    assert (route["port"], [b["port"] for b in route["backends"]]) == (listen_port, [backend.port])
    assert [t["name"] for t in route["toxics"]] == ["latency_downstream", "cut"]

    with proxy.down():
        assert server.get_proxy("db").enabled is False
        assert proxies_of(node)["db"]["enabled"] is False
    assert server.get_proxy("db").enabled is True

    assert proxy.destroy_toxic("cut")
    with pytest.raises(toxiproxy.exceptions.NotFound):
        proxy.destroy_toxic("cut")
    assert sorted(proxy.toxics()) == ["latency_downstream"]

    populated = server.populate([{"name": "cache", "upstream": upstream, "listen": "127.0.0.1:0"}])
    assert [p.name for p in populated] == ["cache"]
    assert sorted(server.proxies()) == ["cache", "db"]

    assert server.reset()
    assert proxy.toxics() == {}
    server.destroy_all()
    assert server.proxies() == {}
    assert proxies_of(node) == {}
    with pytest.raises(toxiproxy.exceptions.NotFound):
        proxy.destroy()
    assert_clean_log(node)


def echo_time(conn: socket.socket, message: bytes) -> float:
    """Seconds from sending ``message`` on an open connection to its whole echo."""
    began = time.monotonic()
    conn.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = conn.recv(65536)
        assert chunk, f"closed after {got!r}"
        got += chunk
    assert got == message
    return time.monotonic() - began


def read_to_end(conn: socket.socket) -> tuple[bytes, str]:
    """What comes until the peer's end, and how it ended: "eof" or "reset"."""
    got = b""
    try:
        while chunk := conn.recv(65536):
            got += chunk
    except ConnectionResetError:
        return got, "reset"
    return got, "eof"


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_the_python_clients_toxics_act_on_the_traffic(
    start_node: StartNode, tmp_path: Path, backend: Backend, engine: str
) -> None:
    """What toxiproxy-python sets up acts on real connections through restcp: a latency
    delays an open connection's echo and a new one's, an update applies at once, removal
    (and ``reset``) takes the delay away; a limit_data cuts; a reset_peer resets; a proxy
    down refuses new clients and closes open ones, and is back up after the block. On
    ``--engine native`` the open connections are the engine's until a toxic comes, and
    move to asyncio with the route (docs/engine.md)."""
    node, base = start(start_node, tmp_path / "restcp.db", "--engine", engine)
    host, api_port = base.removeprefix("http://").rsplit(":", 1)
    server = toxiproxy.Toxiproxy()
    server.update_api_consumer(host, int(api_port))
    proxy = server.create(upstream=f"127.0.0.1:{backend.port}", name="db")
    port = int(proxy.listen.rsplit(":", 1)[1])

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert echo_time(conn, b"before") < SLACK
        proxy.add_toxic(type="latency", attributes={"latency": 300})
        assert 0.3 - MS <= echo_time(conn, b"slowed") < 0.3 + SLACK
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            assert 0.3 - MS <= echo_time(fresh, b"new one") < 0.3 + SLACK
        toxiproxy.api.APIConsumer.post(
            "/proxies/db/toxics/latency_downstream", json={"attributes": {"latency": 600}}
        )
        assert 0.6 - MS <= echo_time(conn, b"updated") < 0.6 + SLACK
        proxy.destroy_toxic("latency_downstream")
        assert echo_time(conn, b"removed") < SLACK

        proxy.add_toxic(type="latency", attributes={"latency": 300})
        assert echo_time(conn, b"again") >= 0.3 - MS
        assert server.reset()
        assert echo_time(conn, b"after reset") < SLACK

        proxy.add_toxic(name="cut", type="limit_data", attributes={"bytes": 5})
        with socket.create_connection(("127.0.0.1", port), timeout=10) as cut:
            cut.sendall(b"0123456789")
            assert read_to_end(cut) == (b"01234", "eof")
        proxy.destroy_toxic("cut")

        with proxy.down():
            assert read_to_end(conn) == (b"", "eof")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
    assert roundtrip(port) == b"ping\n"

    # A reset_peer resets a connection opened before it as well as a new one.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as older:
        assert echo_time(older, b"older") < SLACK
        proxy.add_toxic(name="rst", type="reset_peer", attributes={"timeout": 200})
        with socket.create_connection(("127.0.0.1", port), timeout=10) as rst:
            began = time.monotonic()
            assert echo_time(rst, b"hello") < SLACK
            assert read_to_end(rst) == (b"", "reset")
            assert time.monotonic() - began >= 0.2 - MS
        assert read_to_end(older) == (b"", "reset")
    proxy.destroy_toxic("rst")
    assert roundtrip(port) == b"ping\n"
    assert_clean_log(node)


# -- toxiproxy-node-client -----------------------------------------------------------------


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The npm client, installed from tests/e2e/toxiproxy_node's lock file into that
    directory (never at restcp's run time): scripts/test installs Node.js and npm."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    needed = "Node.js and npm are needed (scripts/test installs them with apt)"
    assert node, needed
    assert npm, needed
    installed = NODE_PROJECT / "node_modules" / "toxiproxy-node-client" / "package.json"
    if not installed.exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_PROJECT)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_PROJECT / "scenario.js"


def test_the_node_client_drives_restcp(
    start_node: StartNode, tmp_path: Path, backend: Backend, node_client: Path
) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    upstream = f"127.0.0.1:{backend.port}"
    ran = subprocess.run(
        ["node", str(node_client), base, upstream], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)

    assert json.loads(seen["version"]) == {"version": "restcp 0.1.0"}
    created = seen["created"]
    listen_port = int(created["listen"].rsplit(":", 1)[1])
    assert created == {
        "enabled": True,
        "listen": f"127.0.0.1:{listen_port}",
        "name": "db",
        "upstream": upstream,
    }
    assert seen["duplicate"] == "Error: Request failed with status code 409"
    assert seen["missing"] == "Error: Request failed with status code 404"
    assert seen["toxic"] == {
        "attributes": {"jitter": 10, "latency": 100},
        "name": "slow",
        "stream": "downstream",
        "toxicity": 1,
        "type": "latency",
    }
    assert seen["toxicTaken"] == "Error: Request failed with status code 409"
    assert seen["badType"] == "Error: Request failed with status code 400"
    assert seen["defaultName"] == "limit_data_upstream"
    # An update merges the attributes and sets the toxicity; type and stream stay.
    expected = {
        "attributes": {"jitter": 10, "latency": 200},
        "name": "slow",
        "stream": "downstream",
        "toxicity": 0.25,
        "type": "latency",
    }
    assert seen["updated"] == expected
    assert seen["fetched"] == expected
    assert seen["disabled"] == {**created, "enabled": False}
    assert seen["listedWhileDown"] == {"db": {**created, "enabled": False}}
    # toxiproxy's order: the upstream chain, then the downstream one.
    assert seen["afterRemove"] == [expected]
    assert seen["populated"] == ["cache", "db"]
    assert seen["afterReset"] == created
    assert seen["afterResetToxics"] == []
    assert seen["removedGone"] == "Error: Request failed with status code 404"

    route = proxies_of(node)["db"]
    assert (route["port"], route["enabled"], route["toxics"]) == (listen_port, True, [])
    assert roundtrip(listen_port) == b"ping\n"
    assert_clean_log(node)


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_the_node_clients_toxics_act_on_the_traffic(
    start_node: StartNode, tmp_path: Path, backend: Backend, node_client: Path, engine: str
) -> None:
    """What toxiproxy-node-client sets up acts on the connections of node's own sockets
    (effects.js measures, this judges): a latency on an open and a new connection, its
    update and removal, a limit_data's cut, a proxy down, a reset_peer's reset; on either
    engine."""
    node, base = start(start_node, tmp_path / "restcp.db", "--engine", engine)
    ran = subprocess.run(
        ["node", str(node_client.with_name("effects.js")), base, f"127.0.0.1:{backend.port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    ms, slack = MS * 1000, SLACK * 1000
    assert seen["before"] < slack, seen
    assert 300 - ms <= seen["openWithLatency"] < 300 + slack, seen
    assert 300 - ms <= seen["newWithLatency"] < 300 + slack, seen
    assert 600 - ms <= seen["openAfterUpdate"] < 600 + slack, seen
    assert seen["openAfterRemoval"] < slack, seen
    assert seen["limited"] == {"got": "01234", "ended": "eof"}, seen
    assert (seen["openWhenDown"], seen["newWhenDown"]) == ("eof", "ECONNREFUSED"), seen
    assert seen["afterUp"] < slack, seen
    assert (seen["beforeReset"], seen["reset"]) == ("hello", "ECONNRESET"), seen
    assert seen["resetAfter"] >= 200 - ms, seen
    assert seen["olderReset"] == "ECONNRESET", seen
    assert_clean_log(node)


# -- toxiproxy's shapes and status codes, over plain HTTP ----------------------------------


def test_shapes_and_status_codes(start_node: StartNode, tmp_path: Path, backend: Backend) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    upstream = f"127.0.0.1:{backend.port}"
    made = call(base, "POST", "/proxies", {"name": "db", "upstream": upstream})
    assert made.status == 201, made
    proxy = made.json()
    assert list(proxy) == ["name", "listen", "upstream", "enabled", "toxics"]
    assert (proxy["upstream"], proxy["enabled"], proxy["toxics"]) == (upstream, True, [])

    toxic = call(base, "POST", "/proxies/db/toxics", {"type": "slicer", "stream": "upstream"})
    # 200 (not 201), and toxiproxy's fields in its order, the attributes all filled in.
    assert toxic.status == 200, toxic
    assert list(toxic.json()) == ["attributes", "name", "type", "stream", "toxicity"]
    assert toxic.json()["attributes"] == {"average_size": 1024, "delay": 0, "size_variation": 0}
    # Unknown fields and attributes are ignored, as toxiproxy's decoder ignores them; an
    # attribute restcp requires is toxiproxy's zero when omitted.
    cut = call(
        base,
        "POST",
        "/proxies/db/toxics",
        {"type": "limit_data", "attributes": {"what": 1}, "clients": "x", "extra": []},
    )
    assert (cut.status, cut.json()["attributes"]) == (200, {"bytes": 0})

    errors = [
        ("POST", "/proxies", {"upstream": upstream}, 400, "missing required field: name"),
        ("POST", "/proxies", {"name": "x"}, 400, "missing required field: upstream"),
        ("POST", "/proxies", {"name": "db", "upstream": upstream}, 409, "proxy already exists"),
        ("POST", "/proxies", "{", 400, "bad request body: "),
        ("POST", "/proxies", {"name": 1, "upstream": upstream}, 400, "bad request body: "),
        ("POST", "/proxies", {"name": "x", "upstream": "nowhere"}, 400, "bad request body: "),
        ("GET", "/proxies/nope", None, 404, "proxy not found"),
        ("POST", "/proxies/nope", {"enabled": False}, 404, "proxy not found"),
        ("DELETE", "/proxies/nope", None, 404, "proxy not found"),
        ("GET", "/proxies/nope/toxics", None, 404, "proxy not found"),
        ("POST", "/proxies/nope/toxics", {"type": "latency"}, 404, "proxy not found"),
        ("GET", "/proxies/db/toxics/nope", None, 404, "toxic not found"),
        ("PATCH", "/proxies/db/toxics/nope", {}, 404, "toxic not found"),
        ("DELETE", "/proxies/db/toxics/nope", None, 404, "toxic not found"),
        (
            "POST",
            "/proxies/db/toxics",
            {"type": "slicer", "stream": "upstream"},
            409,
            "toxic already exists",
        ),
        ("POST", "/proxies/db/toxics", {"type": "nope"}, 400, "invalid toxic type"),
        (
            "POST",
            "/proxies/db/toxics",
            {"type": "latency", "stream": "x"},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            {"type": "bandwidth"},
            400,
            "bad request body: attributes.rate: ",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            {"type": "latency", "toxicity": 2},
            400,
            "bad request body: toxicity: ",
        ),
        (
            "PATCH",
            "/proxies/db/toxics/slicer_upstream",
            {"attributes": {"average_size": -1}},
            400,
            "bad request body: attributes.average_size: ",
        ),
        ("POST", "/populate", {"name": "x"}, 400, "bad request body: "),
        ("POST", "/populate", [{"name": "x"}], 400, "missing required field: upstream at proxy 1"),
    ]
    for method, path, body, status, message in errors:
        answer = call(base, method, path, body)
        assert answer.status == status, (method, path, body, answer)
        assert set(answer.json()) == {"error", "status"}, answer
        assert answer.json()["status"] == status
        assert answer.json()["error"].startswith(message), (message, answer)

    # Nothing of the refused requests was kept.
    listed = call(base, "GET", "/proxies").json()
    assert list(listed) == ["db"]
    assert [t["name"] for t in listed["db"]["toxics"]] == [
        "slicer_upstream",
        "limit_data_downstream",
    ]
    assert call(base, "GET", "/proxies/db/toxics/slicer_upstream").json()["attributes"] == {
        "average_size": 1024,
        "delay": 0,
        "size_variation": 0,
    }

    # A browser is refused, as toxiproxy refuses one.
    browser = http("GET", base + "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert (browser.status, browser.json()["error"]) == (403, "User agent not allowed")
    assert call(base, "DELETE", "/proxies/db/toxics/slicer_upstream").status == 204
    assert call(base, "DELETE", "/proxies/db").status == 204
    assert call(base, "GET", "/proxies").json() == {}
    assert_clean_log(node)


def test_update_moves_and_repoints_a_proxy(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    """A new ``listen`` restarts the proxy there with its toxics (a new route under the
    name); a new ``upstream`` repoints its backend; populate keeps a proxy that matches."""
    node, base = start(start_node, tmp_path / "restcp.db")
    made = call(base, "POST", "/proxies", {"name": "db", "upstream": "127.0.0.1:9"}).json()
    call(base, "POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 1}})
    with Backend(echo) as spare:
        moved_to = spare.port  # a port nobody listens on once the spare is closed
    repointed = call(base, "PATCH", "/proxies/db", {"upstream": f"127.0.0.1:{backend.port}"})
    assert (repointed.status, repointed.json()["listen"]) == (200, made["listen"])
    old_port = int(made["listen"].rsplit(":", 1)[1])
    assert roundtrip(old_port) == b"ping\n"

    moved = call(base, "POST", "/proxies/db", {"listen": f"127.0.0.1:{moved_to}"})
    assert moved.status == 200, moved
    assert moved.json()["listen"] == f"127.0.0.1:{moved_to}"
    assert [t["name"] for t in moved.json()["toxics"]] == ["latency_downstream"]
    assert roundtrip(moved_to) == b"ping\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
    assert list(proxies_of(node)) == ["db"]

    # populate: a match is kept, toxics and all; a proxy elsewhere is replaced, fresh.
    upstream = f"127.0.0.1:{backend.port}"
    kept = call(
        base, "POST", "/populate", [{"name": "db", "listen": "127.0.0.1:0", "upstream": upstream}]
    )
    assert kept.status == 201, kept
    assert kept.json()["proxies"] == [moved.json()]
    replaced = call(base, "POST", "/populate", [{"name": "db", "upstream": "127.0.0.1:9"}])
    assert replaced.status == 201, replaced
    assert replaced.json()["proxies"][0]["toxics"] == []
    assert replaced.json()["proxies"][0]["upstream"] == "127.0.0.1:9"
    assert_clean_log(node)


def test_a_listen_port_taken_is_refused_and_changes_nothing(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    upstream = f"127.0.0.1:{backend.port}"
    taken = call(
        base,
        "POST",
        "/proxies",
        {"name": "db", "listen": f"127.0.0.1:{backend.port}", "upstream": upstream},
    )
    assert taken.status == 409, taken
    assert call(base, "GET", "/proxies").json() == {}
    made = call(base, "POST", "/proxies", {"name": "db", "upstream": upstream}).json()
    call(base, "POST", "/proxies/db/toxics", {"type": "latency"})
    refused = call(base, "POST", "/proxies/db", {"listen": f"127.0.0.1:{backend.port}"})
    assert refused.status == 409, refused
    assert call(base, "GET", "/proxies/db").json() == {
        **made,
        "toxics": call(base, "GET", "/proxies/db/toxics").json(),
    }
    assert len(proxies_of(node)["db"]["toxics"]) == 1
    assert len(node.call("GET", "/apps/toxiproxy/routes").json()) == 1
    assert_clean_log(node)


# -- its -config file, and a restart ---------------------------------------------------------


def test_the_config_file_is_read_at_start_and_proxies_survive_a_restart(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    upstream = f"127.0.0.1:{backend.port}"
    config = tmp_path / "toxiproxy.json"
    config.write_text(
        json.dumps(
            [
                {"name": "db", "listen": "localhost:0", "upstream": upstream},
                {"name": "down", "listen": "127.0.0.1:0", "upstream": upstream, "enabled": False},
            ]
        )
    )
    store = tmp_path / "restcp.db"
    node, base = start(start_node, store, "--toxiproxy-config", str(config))
    listed = call(base, "GET", "/proxies").json()
    assert sorted(listed) == ["db", "down"]
    assert (listed["db"]["enabled"], listed["down"]["enabled"]) == (True, False)
    db_port = int(listed["db"]["listen"].rsplit(":", 1)[1])
    assert roundtrip(db_port) == b"ping\n"
    added = call(
        base, "POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 7}}
    )
    assert added.status == 200, added
    node.stop()

    # The same config again: the proxies match (port 0 is any port), so they are kept,
    # with the toxic added through the API.
    again, base = start(start_node, store, "--toxiproxy-config", str(config))
    assert call(base, "GET", "/proxies").json() == {
        **listed,
        "db": {**listed["db"], "toxics": [added.json()]},
    }
    assert_clean_log(again)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("{", "bad request body"),
        ('[{"name": "x"}]', "missing required field: upstream at proxy 1"),
        (
            '[{"name": "x", "upstream": "127.0.0.1:9", "listen": "10.9.9.9:0"}]',
            "proxy 1: frontend_ip 10.9.9.9 is not served",
        ),
    ],
)
def test_a_bad_config_file_stops_the_start(
    start_node: StartNode, tmp_path: Path, content: str | None, message: str
) -> None:
    config = tmp_path / "toxiproxy.json"
    if content is not None:
        config.write_text(content)
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--toxiproxy-api", "127.0.0.1:0")
    node = start_node(*args, "--toxiproxy-config", str(config), ready=False)
    assert node.proc.wait(timeout=30) != 0
    log = "\n".join(node.lines)
    assert f"--toxiproxy-config {config}" in log, log
    assert message in log, log
    assert "Traceback" not in log, log


def test_a_non_loopback_address_needs_insecure(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--toxiproxy-api", "0.0.0.0:0")
    node = start_node(*args, ready=False)
    assert node.proc.wait(timeout=30) == 2
    assert "--insecure" in "\n".join(node.lines)


def test_concurrent_creates_of_one_name_make_one_proxy(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    body = {"name": "db", "upstream": f"127.0.0.1:{backend.port}"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(base, "POST", "/proxies", body).status, range(8)))
    assert sorted(answers) == [201] + [409] * 7
    assert list(proxies_of(node)) == ["db"]
    assert len(node.call("GET", "/apps/toxiproxy/routes").json()) == 1


def test_a_body_too_large_is_refused_in_toxiproxys_shape(
    start_node: StartNode, tmp_path: Path
) -> None:
    node, base = start(start_node, tmp_path / "restcp.db")
    answer = call(base, "POST", "/populate", "[" + " " * (1024 * 1024) + "]")
    assert answer.status == 413, answer
    assert answer.json()["status"] == 413
    assert call(base, "GET", "/proxies").json() == {}
    assert_clean_log(node)


def test_the_named_routes_of_its_app_are_the_proxies(
    start_node: StartNode, tmp_path: Path, backend: Backend
) -> None:
    """A route named through restcp's API is a proxy; one without a name, or of another app,
    is not; ``--toxiproxy-app`` chooses the app."""
    node, base = start(start_node, tmp_path / "restcp.db", "--toxiproxy-app", "chaos")
    named = node.call("PUT", "/apps/chaos/routes", {"name": "db"}).json()
    node.call(
        "PUT",
        f"/apps/chaos/routes/{named['id']}/backends",
        {"ip": "127.0.0.1", "port": backend.port},
    )
    node.call("PUT", "/apps/chaos/routes", {})
    node.call("PUT", "/apps/toxiproxy/routes", {"name": "other"})
    assert call(base, "GET", "/proxies").json() == {
        "db": {
            "name": "db",
            "listen": f"127.0.0.1:{named['port']}",
            "upstream": f"127.0.0.1:{backend.port}",
            "enabled": True,
            "toxics": [],
        }
    }
    # A toxic added through either API is the same toxic.
    node.call(
        "PUT",
        f"/apps/chaos/routes/{named['id']}/toxics",
        {"type": "latency", "clients": ["10.0.0.0/8"]},
    )
    assert [t["name"] for t in call(base, "GET", "/proxies/db/toxics").json()] == [
        "latency_downstream"
    ]
    made = call(
        base, "POST", "/proxies", {"name": "cache", "upstream": f"127.0.0.1:{backend.port}"}
    )
    assert made.status == 201, made
    assert sorted(r["name"] or "" for r in node.call("GET", "/apps/chaos/routes").json()) == [
        "",
        "cache",
        "db",
    ]
    # Renamed through restcp's API, the proxy is known by its new name.
    node.call("PATCH", f"/apps/chaos/routes/{named['id']}", {"name": "primary"})
    assert sorted(call(base, "GET", "/proxies").json()) == ["cache", "primary"]
    assert_clean_log(node)
