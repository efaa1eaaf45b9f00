"""The options that set a route's or a backend's fields, one per field of the API's request
bodies (api/schemas.py; tests/unit/cli/test_fields.py keeps them in step), and ``--set
FIELD=VALUE`` for any field, as JSON or as text.

Each option takes its field's own values; ``none`` is JSON null where the field may be null
(``--max-connections none`` removes the limit). The server validates every value: a bad
one is its 422, naming the field (exit 1).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

from restcp.cli.params import Assignment, JsonText, Nullable
from restcp.model import (
    AdminState,
    BackendProxyProtocol,
    Balance,
    ProxyProtocol,
    WhenAllDown,
)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
# (field, the option's type, its help)
Settings = Sequence[tuple[str, "click.ParamType[Any]", str]]


def _choice(literal: Any) -> click.Choice[str]:
    return click.Choice(typing.get_args(literal))


class _Splice(click.ParamType[Any]):
    """A route's ``splice``: ``auto``, ``true`` or ``false``."""

    name = "splice"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        known: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}
        if value.lower() not in known:
            self.fail(f"{value!r} is not auto, true or false", param, ctx)
        return known[value.lower()]

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[auto|true|false]"


class _ServerNames(click.ParamType[Any]):
    """A route's ``sni``: server names separated by commas."""

    name = "server_names"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        return [name.strip() for name in value.split(",")]

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "NAME[,NAME...]"


# A route's settings, as PATCH and PUT take them.
ROUTE_SETTINGS: Settings = [
    ("balance", _choice(Balance), "how a backend is picked for each new client"),
    ("connect_timeout", click.FLOAT, "seconds to connect to a backend"),
    ("idle_timeout", click.FLOAT, "seconds a silent connection is kept; 0: for ever"),
    ("health_check", Nullable(JsonText()),
     "active checks, as JSON: '{}' is a TCP connect every 2 s; none: off"),
    ("when_all_down", _choice(WhenAllDown), "with every backend down: refuse, or try them all"),
    ("max_connections", Nullable(click.INT), "open connections of the route at most; none: no cap"),
    ("half_close_timeout", click.FLOAT, "seconds a half-closed connection may last"),
    ("max_connect_attempts", click.INT, "backends tried for one client"),
    ("proxy_protocol", Nullable(_choice(ProxyProtocol)),
     "send a PROXY protocol header to backends; none: off"),
    ("passive_fall", click.INT, "failed connects in a row that mark a backend down; 0: never"),
    ("passive_cooldown", click.FLOAT, "seconds a backend marked down passively stays down"),
    ("splice", _Splice(), "relay in the kernel (splice(2)): auto, true or false"),
    ("enabled", click.BOOL,
     "false: the port refuses new clients and open connections close; true: served again"),
    ("seed", Nullable(click.INT),
     "the seed of the route's random draws (toxics); none: the node's"),
    ("name", Nullable(click.STRING), "a name unique in its app (toxiproxy's proxy name)"),
    ("sni", Nullable(_ServerNames()),
     "share the port by TLS server name: names, *.suffix, * (the default); none: alone"),
    ("tls", Nullable(JsonText()),
     "terminate TLS, as JSON: '{\"certificates\": [\"web\"]}' (docs/tls.md); none: off"),
    ("backend_tls", Nullable(JsonText()),
     "speak TLS to the backends, as JSON: '{}' (verified by the system's CAs), "
     "'{\"ca\": \"PEM\", \"server_name\": \"db.internal\"}' (docs/tls.md); none: off"),
]  # fmt: skip

# Route creation only (PUT): where it listens.
ROUTE_PLACE: Settings = [
    ("port", click.INT, "the port to listen on (default: the next free one of the node's range)"),
    ("frontend_ip", click.STRING, "the address to listen on (default: the node's first)"),
]

# A backend's fields besides its address.
BACKEND_SETTINGS: Settings = [
    ("weight", click.INT, "its share of new clients, relative to the others' (0: none)"),
    ("state", _choice(AdminState), "enabled, drain (no new clients) or disabled"),
    ("drain_timeout", Nullable(click.FLOAT),
     "seconds a draining backend's connections may finish; none: no limit"),
    ("max_connections", Nullable(click.INT), "its open connections at most; none: no cap"),
    ("proxy_protocol", Nullable(_choice(BackendProxyProtocol)),
     "this backend's PROXY protocol header, over the route's; none: the route's"),
]  # fmt: skip

# A backend's PATCH may move it too.
BACKEND_ADDRESS: Settings = [
    ("ip", click.STRING, "its new address: an IP, or a DNS name resolved at every connect"),
    ("port", click.INT, "its new port"),
]

SET = click.option(
    "--set",
    "assignments",
    type=Assignment(),
    multiple=True,
    metavar="FIELD=VALUE",
    help="any field, as JSON or as text (--set idle_timeout=600, --set "
    "health_check='{\"interval\": 1}'); repeatable",
)


def options(settings: Settings) -> Decorator:
    """A decorator adding one option per field, and ``--set``."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = SET(function)
        for field, kind, text in reversed(settings):
            flag = "--" + field.replace("_", "-")
            function = click.option(flag, field, type=kind, default=None, help=text)(function)
        return function

    return decorate


def given(arguments: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The body of the fields given on the command line: the options set (taking them out
    of ``arguments``), then each ``--set``. A ``none`` is kept, as JSON null."""
    body: dict[str, Any] = {}
    for field, _kind, _text in settings:
        value = arguments.pop(field)
        source = click.get_current_context().get_parameter_source(field)
        if source is click.core.ParameterSource.COMMANDLINE:
            body[field] = value
    for field, value in arguments.pop("assignments"):
        body[field] = value
    return body
