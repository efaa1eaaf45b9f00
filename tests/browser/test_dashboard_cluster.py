"""The dashboard on a cluster of two real nodes on a real Redis: the overview lists the
nodes and their leases, the routes table shows through one node the counters of a route the
other serves, and a write through a node that does not serve the route, whose
serving node does not answer in time (stopped), shows as pending (the API's 202), then
applies once that node runs again."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.cluster.conftest import StartNode, ready

# The cluster's fixtures, for this module (tests/cluster/conftest.py is not a parent).
from tests.cluster.conftest import redis_server as redis_server
from tests.cluster.conftest import start_node as start_node
from tests.e2e.conftest import wait_until

A, C = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def test_nodes_and_a_pending_write(context: BrowserContext, start_node: StartNode) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    created = a.call("PUT", "/apps/web/routes", {"frontend_ip": C})
    assert created.status == 201, created
    page = context.new_page()
    page.goto(a.api + "/")
    nodes = page.get_by_role("table").filter(has_text="Routes serving")
    expect(nodes.locator("tbody tr")).to_have_count(2)
    expect(nodes).to_contain_text(f"{A} (")
    expect(nodes).to_contain_text(f"{C} (")

    # C serves the route; A's page shows its counters all the same (published through Redis).
    page.goto(a.api + "/#/routes")
    row = page.locator('#routes-table tbody tr[data-key="web/1"]')
    sessions_now = row.locator("td").nth(3)
    expect(sessions_now).to_have_text("0", timeout=5000)

    page.goto(a.api + "/#/route/web/1")
    expect(page.get_by_role("heading", name="Route web/1")).to_be_visible()
    # Stopped, C is subscribed still but answers nothing: A's write is stored, not applied.
    c.proc.send_signal(signal.SIGSTOP)
    try:
        page.get_by_label("IP or host name").fill("127.0.0.1")
        page.get_by_label("Port").fill("9")
        page.get_by_role("button", name="Add backend").click()
        expect(page.locator(".toast.pending")).to_contain_text("pending", timeout=10000)
        # Stored: every node shows it, and so does the page.
        assert a.call("GET", "/apps/web/routes/1/backends/1").status == 200
        expect(page.locator('[data-backend="1"]')).to_be_visible(timeout=2000)
    finally:
        c.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: c.call("GET", "/apps/web/routes/1/backends/1").status == 200, "applied on C")
