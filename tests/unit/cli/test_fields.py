"""The CLI's options set exactly the fields of the API's request bodies, each with the values
its field takes, and the commands that only print load neither the client nor the server."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

import click
import pytest
from pydantic import BaseModel

from restcp.api.schemas import BackendBody, BackendPatchBody, RouteBody, RouteSettingsBody
from restcp.cli.fields import (
    BACKEND_ADDRESS,
    BACKEND_SETTINGS,
    ROUTE_PLACE,
    ROUTE_SETTINGS,
    Settings,
)
from restcp.cli.params import Assignment, json_or_text
from restcp.model import Balance


@pytest.mark.parametrize(
    ("settings", "body", "besides"),
    [
        (ROUTE_SETTINGS, RouteSettingsBody, set()),
        ([*ROUTE_PLACE, *ROUTE_SETTINGS], RouteBody, set()),
        (BACKEND_SETTINGS, BackendBody, {"ip", "port"}),  # positional
        ([*BACKEND_ADDRESS, *BACKEND_SETTINGS], BackendPatchBody, set()),
    ],
    ids=["route update", "route create", "backend add", "backend update"],
)
def test_an_option_for_every_body_field(
    settings: Settings, body: type[BaseModel], besides: set[str]
) -> None:
    names = [field for field, _kind, _text in settings]
    assert len(names) == len(set(names))
    assert set(names) | besides == set(body.model_fields)


def convert(settings: Settings, field: str, text: str) -> Any:
    kind = next(kind for name, kind, _text in settings if name == field)
    return kind.convert(text, None, None)


def test_options_take_their_fields_values() -> None:
    assert convert(ROUTE_SETTINGS, "splice", "auto") == "auto"
    assert convert(ROUTE_SETTINGS, "splice", "FALSE") is False
    assert convert(ROUTE_SETTINGS, "max_connections", "none") is None
    assert convert(ROUTE_SETTINGS, "max_connections", "50") == 50
    assert convert(ROUTE_SETTINGS, "health_check", '{"interval": 1}') == {"interval": 1}
    assert convert(ROUTE_SETTINGS, "health_check", "none") is None
    assert convert(BACKEND_SETTINGS, "proxy_protocol", "none") is None  # JSON null
    balance = next(kind for name, kind, _text in ROUTE_SETTINGS if name == "balance")
    assert isinstance(balance, click.Choice)
    assert tuple(balance.choices) == typing.get_args(Balance)
    for field, text in [("splice", "sometimes"), ("max_connections", "many")]:
        with pytest.raises(click.BadParameter):
            convert(ROUTE_SETTINGS, field, text)


def test_set_takes_json_or_text() -> None:
    assign = Assignment()
    assert assign.convert("idle_timeout=600", None, None) == ("idle_timeout", 600)
    assert assign.convert("balance=round_robin", None, None) == ("balance", "round_robin")
    assert assign.convert("health_check={}", None, None) == ("health_check", {})
    assert assign.convert("max_connections=null", None, None) == ("max_connections", None)
    assert assign.convert("send=a=b", None, None) == ("send", "a=b")
    assert json_or_text('"600"') == "600"  # quoted: the text, not the number
    for bad in ("balance", "=1", ""):
        with pytest.raises(click.BadParameter):
            assign.convert(bad, None, None)


def test_serve_and_worker_load_no_client_and_no_tables() -> None:
    """`restcp serve` blocks its stop signals only once it has parsed its flags: what it
    loads before that is kept small (no httpx, pydantic, Rich or YAML)."""
    code = (
        "import sys; from restcp.cli import root; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'pydantic', 'rich', 'yaml', 'aiohttp')]; assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
