"""The references name what the code has: docs/configuration.md every flag of `restcp serve`
and its variable, docs/api.md every balance and every field a PATCH takes."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from restcp.api.schemas import BackendPatchBody, RouteSettingsBody
from restcp.api.toxics import ToxicBody, ToxicPatchBody
from restcp.cli.serve import serve
from restcp.model import Balance

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def serve_options() -> list[click.Option]:
    return [p for p in serve.params if isinstance(p, click.Option) and p.name != "help"]


@pytest.mark.parametrize("option", serve_options(), ids=lambda o: o.opts[0])
def test_every_flag_and_variable_is_documented(option: click.Option) -> None:
    text = REFERENCE.read_text()
    flag = option.opts[0]
    assert f"`{flag}" in text, f"{flag} is missing from docs/configuration.md"
    variables = re.findall(r"RESTCP_[A-Z_]+", option.help or "")
    assert variables, f"{flag} names no RESTCP_* variable in its help"
    assert option.envvar in variables, f"{flag} reads {option.envvar}, its help names another"
    for variable in variables:
        assert f"`{variable}`" in text, f"{variable} is missing from docs/configuration.md"


API = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def section(title: str) -> str:
    """The text of docs/api.md's section whose heading starts with ``title``."""
    text = API.read_text()
    start = text.index(f"### `{title}")
    end = text.find("\n#", start + 1)
    return text[start:end]


def test_the_objects_table_names_every_balance() -> None:
    row = next(line for line in API.read_text().splitlines() if line.startswith("| `balance` |"))
    for balance in typing.get_args(Balance):
        assert f"`{balance}`" in row, balance


@pytest.mark.parametrize(
    ("title", "model"),
    [
        ("PATCH /apps/{app}/routes/{route}`", RouteSettingsBody),
        ("PATCH /apps/{app}/routes/{route}/backends/{backend}`", BackendPatchBody),
        ("PATCH /apps/{app}/routes/{route}/toxics/{toxic}`", ToxicPatchBody),
        ("PUT /apps/{app}/routes/{route}/toxics`", ToxicBody),
    ],
)
def test_each_patch_section_names_every_field(title: str, model: type[BaseModel]) -> None:
    text = section(title)
    for name in model.model_fields:
        assert f"`{name}`" in text, f"{name} is missing from docs/api.md's {title}"
