"""The dashboard without tokens, and what another site's page can do to it in a real
browser: nothing. Its writes are refused by the API's own rules (the page's Origin is not
the API's), it cannot read the API's answers, and it cannot frame the dashboard."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import serve_args
from tests.helpers import Node, NodeStarter, free_port_range


@pytest.fixture(scope="module")
def open_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node without tokens: what cross-site requests and DNS rebinding aim at."""
    starter = NodeStarter()
    lo, hi = free_port_range()
    store = tmp_path_factory.mktemp("open") / "restcp.db"
    try:
        yield starter(*serve_args(store, lo, hi, "--log-level", "info"))
    finally:
        starter.stop_all()


class EvilSite:
    """A page of another origin (another port of 127.0.0.1 is another origin), serving
    ``html`` at /."""

    def __init__(self) -> None:
        self.html = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def evil() -> Iterator[EvilSite]:
    site = EvilSite()
    yield site
    site.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    yield context
    context.close()


def test_without_tokens_the_page_opens_on_the_overview(
    context: BrowserContext, open_node: Node
) -> None:
    page = context.new_page()
    page.goto(open_node.api + "/ui/")
    expect(page.get_by_role("heading", name="This node")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.locator("#login")).to_be_hidden()


def test_another_sites_page_can_neither_change_nor_read_nor_frame_it(
    context: BrowserContext, open_node: Node, evil: EvilSite, tmp_path: Path
) -> None:
    target = open_node.api
    evil.html = f"""<!doctype html><title>evil</title>
<iframe id="frame" src="{target}/"></iframe>
<script>
window.results = {{}};
async function attempt(name, url, init) {{
  try {{
    const r = await fetch(url, init);
    window.results[name] = {{status: r.status, body: await r.text()}};
  }} catch (e) {{
    window.results[name] = {{error: String(e)}};
  }}
}}
window.done = Promise.all([
  attempt("create", "{target}/apps/evil/routes", {{method: "POST", mode: "no-cors", body: "{{}}"}}),
  attempt("form", "{target}/apps/evil/routes", {{method: "POST", mode: "no-cors",
           headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body: "a=b"}}),
  attempt("read", "{target}/apps", {{}}),
]);
</script>"""
    page: Page = context.new_page()
    page.goto(evil.url)
    page.evaluate("window.done")
    results = page.evaluate("window.results")
    # The writes went out (no-cors) and were refused: nothing was created.
    assert open_node.call("GET", "/apps/evil/routes").status == 404
    assert open_node.call("GET", "/apps").json() == []
    # The read was sent, but its answer is not the page's to read (no CORS headers).
    assert "error" in results["read"], results
    # The frame stays empty: the dashboard refuses to be framed.
    frame = page.frame_locator("#frame")
    expect(frame.get_by_role("heading", name="This node")).to_have_count(0)
    # page.goto waited for the load event, which waits for the frame: chromium put its
    # error page in it.
    assert [f.url for f in page.frames[1:]] == ["chrome-error://chromewebdata/"]
