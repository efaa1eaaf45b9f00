"""Browser tests of the dashboard: Playwright for Python driving Debian's chromium
(/usr/bin/chromium, installed by scripts/test with apt; Playwright never downloads a
browser), against real `restcp serve` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.e2e.conftest import serve_args, wait_until
from tests.helpers import Node, NodeStarter, Response, free_port_range

CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin-token-of-the-dashboard-tests"
# axe-core, from tests/browser/package.json (scripts/test runs npm ci there).
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
# Where the tests put their screenshots, shown in docs/dashboard.md.
SHOTS = Path(__file__).parents[2] / "docs" / "dashboard"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: the tests may run as root (CI containers), where chromium's sandbox
    # refuses to start; the page is our own, on loopback.
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node with tokens on for the module; each test uses apps of its own."""
    starter = NodeStarter()
    lo, hi = free_port_range(1100)
    store = tmp_path_factory.mktemp("dashboard") / "restcp.db"
    try:
        yield starter(*serve_args(store, lo, hi, "--api-token", ADMIN, "--log-level", "info"))
    finally:
        starter.stop_all()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    assert errors == [], errors


def admin(node: Node, method: str, path: str, body: Any = None) -> Response:
    return node.call(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})


def api(node: Node, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
    response = admin(node, method, path, body)
    if status is not None:
        assert response.status == status, (method, path, response)
    else:
        assert response.status < 300, (method, path, response)
    return response.json() if response.body else None


def sign_in(page: Page, node: Node, token: str = ADMIN, app: str = "") -> None:
    page.goto(node.api + "/")
    page.get_by_label("Token", exact=True).fill(token)
    if app:
        page.get_by_label("App (for an app's token").fill(app)
    page.get_by_role("button", name="Sign in").click()


def eventually(check: Any, what: str, deadline: float = 5.0) -> None:
    wait_until(check, what, deadline)
