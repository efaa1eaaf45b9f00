"""Issue #12, part 5: a route's toxics in a cluster. Written through any node, a toxic is
stored in Redis, shown by every node's API, and reaches the node serving the route like
every other change of it: that node applies it, and so writes it into its snapshot, the
file it serves from when it starts with Redis down (control/known.py)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.cluster.conftest import StartNode, create, poll, ready
from tests.helpers import Node

A, C = "127.0.0.2", "127.0.0.3"


def snapshot_toxics(path: Path, route: int) -> list[dict[str, Any]]:
    """The toxics of route ``route`` of app web in the snapshot file at ``path``, in order,
    as the API shows them."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT name, settings FROM toxics WHERE app = 'web' AND route_id = ? "
            "ORDER BY position",
            (route,),
        ).fetchall()
    return [{"name": name, **json.loads(settings)} for name, settings in rows]


def toxics_everywhere(nodes: tuple[Node, ...], path: str) -> list[list[Any]]:
    """What each node's API shows of a route's toxics: listed, and with the route."""
    seen = []
    for node in nodes:
        listed = node.call("GET", f"{path}/toxics")
        assert listed.status == 200, listed
        seen += [listed.json(), node.call("GET", path).json()["toxics"]]
    return seen


def test_a_toxic_written_through_one_node_reaches_the_serving_node(
    start_node: StartNode, tmp_path: Path
) -> None:
    a_snapshot, c_snapshot = tmp_path / "a.db", tmp_path / "c.db"
    a, c = ready(
        start_node(A, snapshot=a_snapshot, ready=False),
        start_node(C, snapshot=c_snapshot, ready=False),
    )
    route = create(a, "web", frontend_ip=C)
    path = f"/apps/web/routes/{route['id']}"
    assert snapshot_toxics(c_snapshot, route["id"]) == []

    # Added through A, which does not serve the route.
    added = a.call("PUT", f"{path}/toxics", {"type": "latency", "attributes": {"latency": 50}})
    assert added.status == 201, added
    slow = added.json()
    assert toxics_everywhere((a, c), path) == [[slow]] * 4
    # The resync timer is 30 s: C has it at once because A announced the change.
    poll(lambda: snapshot_toxics(c_snapshot, route["id"]) == [slow], "C applied the toxic")
    assert snapshot_toxics(a_snapshot, route["id"]) == []

    # Every change of a toxic travels the same way: a second one through C, a PATCH and a
    # removal through A, each applied by C in the order the API keeps.
    cut = c.call("PUT", f"{path}/toxics", {"type": "reset_peer", "stream": "upstream"}).json()
    changed = a.call("PATCH", f"{path}/toxics/latency_downstream", {"attributes": {"jitter": 5}})
    assert changed.status == 200, changed
    slow = changed.json()
    assert toxics_everywhere((a, c), path) == [[slow, cut]] * 4
    poll(lambda: snapshot_toxics(c_snapshot, route["id"]) == [slow, cut], "C applied both")
    assert a.call("DELETE", f"{path}/toxics/latency_downstream").status == 204
    assert toxics_everywhere((a, c), path) == [[cut]] * 4
    poll(lambda: snapshot_toxics(c_snapshot, route["id"]) == [cut], "C removed it")
    assert snapshot_toxics(a_snapshot, route["id"]) == []
    assert "Traceback" not in "\n".join(a.lines + c.lines)
