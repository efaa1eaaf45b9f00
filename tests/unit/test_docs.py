"""The configuration reference names every flag of `restcp serve` and its variable."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from restcp.cli import build_parser

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def serve_options() -> list[argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return [a for a in serve._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("action", serve_options(), ids=lambda a: a.option_strings[0])
def test_every_flag_and_variable_is_documented(action: argparse.Action) -> None:
    text = REFERENCE.read_text()
    flag = action.option_strings[0]
    assert f"`{flag}" in text, f"{flag} is missing from docs/configuration.md"
    variables = re.findall(r"RESTCP_[A-Z_]+", action.help or "")
    assert variables, f"{flag} names no RESTCP_* variable in its help"
    for variable in variables:
        assert f"`{variable}`" in text, f"{variable} is missing from docs/configuration.md"
