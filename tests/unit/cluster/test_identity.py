"""A node's id (cluster/identity.py): its text form, and the /proc proof that an earlier
incarnation of this node's name is gone."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from restcp.cluster.identity import NodeId
from restcp.settings import default_node_name, parse_node_name


def test_an_id_names_the_node_and_its_process_and_reads_back() -> None:
    me = NodeId.this_process("web-3")
    text = str(me)
    assert text.startswith("web-3@")
    assert NodeId.parse(text) == me
    assert me.alive()


@pytest.mark.parametrize(
    "text",
    ["", "web-3-2471-9f0c1e", "web@1.2", "web@1.2.3", "web@1.2.XYZ00000", "a b@1.2.0000000a"],
)
def test_anything_else_in_a_lease_is_no_id(text: str) -> None:
    assert NodeId.parse(text) is None


def test_a_process_that_ended_or_whose_pid_was_reused_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = NodeId.this_process("web")
    assert not dataclasses.replace(me, pid=child.pid).alive()
    # This very pid, started at another time: another process now.
    assert not dataclasses.replace(me, start=me.start + 1).alive()


def test_a_predecessor_has_this_name_and_this_host_and_is_another_process() -> None:
    me = NodeId.this_process("web")
    earlier = dataclasses.replace(me, pid=me.pid + 1)
    assert me.predecessor(earlier)
    assert not me.predecessor(me)
    assert not me.predecessor(dataclasses.replace(earlier, name="web2"))
    assert not me.predecessor(dataclasses.replace(earlier, host=f"{int(me.host, 16) ^ 1:08x}"))


def test_node_names_are_host_name_characters() -> None:
    assert parse_node_name("web-3.example_1") == "web-3.example_1"
    for bad in ("", "a@b", "a b", "x" * 65, "é"):
        with pytest.raises(ValueError, match="not a node name"):
            parse_node_name(bad)
    assert parse_node_name(default_node_name())
