"""docs/design.md maps the tree: every module of src/restcp is named in one of its maps, and
every name in a map is a module that exists, so the map cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "restcp"
DESIGN = ROOT / "docs" / "design.md"
# A map line: indentation, then a directory (`name/`) or a module (`name.py`), possibly with
# its directories (`proxy/manager.py`), then its description.
ENTRY = re.compile(r"^(\s*)((?:[a-z_]+/)*(?:[a-z_]+\.py|[a-z_]+/))(?:\s|$)")


def mapped() -> set[str]:
    """The module paths (relative to src/restcp) that the maps of docs/design.md name."""
    found: set[str] = set()
    blocks = re.findall(r"^```\n(.*?)^```", DESIGN.read_text(), flags=re.M | re.S)
    for block in blocks:
        stack: list[tuple[int, str]] = []
        for line in block.splitlines():
            match = ENTRY.match(line)
            if match is None:
                continue
            indent, name = len(match[1]), match[2]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if name.endswith("/"):
                stack.append((indent, name.rstrip("/")))
                continue
            path = "/".join([*(part for _, part in stack), name])
            found.add(path.removeprefix("src/").removeprefix("restcp/"))
    return found


def modules() -> set[str]:
    return {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def test_every_module_is_on_a_map() -> None:
    assert modules() - mapped() == set()


def test_every_module_on_a_map_exists() -> None:
    assert {path for path in mapped() if not (PACKAGE / path).is_file()} == set()
