"""The import rules cover the whole tree: lint-imports checks only what its contracts name, so a
module or package added without a place in them would escape every rule."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "restcp"


def _contracts() -> list[dict[str, Any]]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        config = tomllib.load(file)
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _top_level() -> set[str]:
    names = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    names |= {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    return {f"restcp.{name}" for name in names}


def _layered(contract: dict[str, Any]) -> set[str]:
    return {part.strip() for layer in contract["layers"] for part in layer.split(":")}


def test_every_top_level_module_has_a_layer() -> None:
    (everything,) = [
        contract
        for contract in _contracts()
        if contract["type"] == "layers" and not contract.get("containers")
    ]
    assert _top_level() - _layered(everything) == set()
    assert _layered(everything) - _top_level() == set()


def test_every_package_of_several_modules_has_its_inner_order_checked() -> None:
    checked: set[str] = set()
    for contract in _contracts():
        checked.update(contract.get("containers", ()))
        if contract["type"] == "independence":
            checked.update({module.rsplit(".", 1)[0] for module in contract["modules"]})
    packages = {
        "restcp." + str(init.parent.relative_to(PACKAGE)).replace("/", ".")
        for init in PACKAGE.glob("**/__init__.py")
        if init.parent != PACKAGE and len(list(init.parent.glob("*.py"))) > 2
    }
    assert packages - checked == set()
