"""The dashboard's files ship in the package and refer only to one another: every file the
page or a module loads is there, under a name the API serves, with nothing from a CDN."""

from __future__ import annotations

import re
from importlib import resources

from restcp.api.app import _TYPES

UI = resources.files("restcp.api").joinpath("ui")


def test_every_file_the_page_loads_is_shipped_and_local() -> None:
    names = {entry.name for entry in UI.iterdir()}
    page = UI.joinpath("index.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', page))
    assert {"app.js", "style.css", "uplot.min.css"} <= loaded
    for entry in UI.iterdir():
        if entry.name.endswith(".js"):
            loaded |= set(re.findall(r'from "\./([^"]+)"', entry.read_text()))
    assert loaded <= names, loaded - names
    # Nothing from elsewhere: no absolute URL in what the page or its modules load.
    for entry in UI.iterdir():
        if entry.name.endswith((".js", ".html", ".css")) and not entry.name.startswith("uplot"):
            assert not re.search(r'(?:src|href|from)\s*=?\s*"https?:', entry.read_text()), entry
    # Every file has a type the API serves, and the vendored library its license.
    assert all(name[name.rfind(".") :] in _TYPES for name in names if "." in name), names
    assert "uplot.LICENSE.txt" in names
