"""The commands of a route's toxics (docs/toxics.md), addressed as the API's paths are:

    restcp toxics list APP ROUTE                  GET    .../routes/ROUTE/toxics
    restcp toxics add APP ROUTE TYPE              PUT    .../routes/ROUTE/toxics
    restcp toxics show|update|remove APP ROUTE NAME   GET|PATCH|DELETE .../toxics/NAME

``--attr NAME=VALUE`` gives an attribute of the toxic's type (``--attr latency=200``); the
server checks every value (a 422 naming ``attributes.NAME``: exit 1). ``routes show`` lists
a route's toxics with ``toxics_table``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from restcp.cli.base import Session, api_command, group
from restcp.cli.output import fields, table
from restcp.cli.params import Assignment
from restcp.model import Stream, ToxicType

if TYPE_CHECKING:
    from rich.table import Table

    from restcp.api.schemas import ToxicOut
    from restcp.client import Toxic

APP = click.argument("app")
ROUTE = click.argument("route", type=int)
NAME = click.argument("name")

# A toxic's own fields, which no attribute may be named (the client takes attributes as
# keyword arguments beside them).
OWN_FIELDS = frozenset({"type", "name", "stream", "toxicity", "clients"})

ATTR = click.option(
    "--attr",
    "attributes",
    type=Assignment(),
    multiple=True,
    metavar="NAME=VALUE",
    help="an attribute of the toxic's type, in its unit (--attr latency=200 --attr "
    "jitter=20; docs/toxics.md lists them); repeatable",
)
TOXICITY = click.option(
    "--toxicity",
    type=float,
    metavar="0-1",
    help="the chance that a connection meets the toxic, drawn once per connection",
)
CLIENTS = click.option(
    "--clients",
    multiple=True,
    metavar="CIDR",
    help="only connections from this network meet the toxic (10.0.0.0/8; an address alone "
    "is its /32 or /128); repeatable",
)


def attribute_text(attributes: dict[str, int]) -> str:
    """``jitter=20 latency=200``: a toxic's attributes in one cell."""
    return " ".join(f"{name}={value}" for name, value in sorted(attributes.items())) or "-"


def toxics_table(toxics: Sequence[ToxicOut], title: str | None = None) -> Table:
    """A route's toxics, in the order its connections meet them."""
    columns = ("NAME", "TYPE", "STREAM", "TOXICITY", "ATTRIBUTES", "CLIENTS")
    rows = [
        (t.name, t.type, t.stream, t.toxicity, attribute_text(t.attributes), t.clients or None)
        for t in toxics
    ]
    return table(columns, rows, title)


def show_toxic(session: Session, toxic: Toxic[Any]) -> None:
    info = toxic.info
    assert info is not None
    data = info.model_dump(mode="json")
    shown = {**data, "attributes": attribute_text(info.attributes), "clients": info.clients}
    session.show(data, fields(shown.items()))


def attributes_of(given: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The ``--attr`` pairs as the API's ``attributes``; one named as a field of the toxic
    itself is a usage error (``--stream``, ``--toxicity`` ... set those)."""
    attributes: dict[str, Any] = {}
    for name, value in given:
        if name in OWN_FIELDS:
            option = "--" + name if name != "type" else "TYPE"
            raise click.BadParameter(
                f"{name!r} is a field of the toxic, not an attribute: give {option}",
                param_hint="'--attr'",
            )
        attributes[name] = value
    return attributes


def register(root: click.Group) -> None:
    """Add ``restcp toxics`` to ``root``."""
    toxics = group(
        "toxics",
        "Toxics: faults a route applies to its connections, one direction each (latency, "
        "bandwidth, slow_close, timeout, reset_peer, slicer, limit_data, limit_time). A "
        "change applies at once, to open connections too.",
        "a route's toxics: list, show, add, update, remove",
        root,
    )

    @api_command(toxics, "list", help="The route's toxics, in the order a connection meets them.")
    @APP
    @ROUTE
    def list_toxics(session: Session, app: str, route: int) -> None:
        found = [t.info for t in session.client.routes(app)[route].toxics.list()]
        infos = [info for info in found if info is not None]
        session.show([info.model_dump(mode="json") for info in infos], toxics_table(infos))

    @api_command(toxics, "show", help="One toxic of the route, by name.")
    @APP
    @ROUTE
    @NAME
    def show(session: Session, app: str, route: int, name: str) -> None:
        show_toxic(session, session.client.routes(app)[route].toxics.get(name))

    @api_command(
        toxics,
        "add",
        help="Add a toxic of TYPE to the route: it applies at once, to open connections "
        "too (PUT .../routes/ROUTE/toxics). Named TYPE_STREAM unless --name is given.",
    )
    @APP
    @ROUTE
    @click.argument("type_", metavar="TYPE", type=click.Choice(typing.get_args(ToxicType)))
    @ATTR
    @click.option(
        "--stream",
        type=click.Choice(typing.get_args(Stream)),
        default="downstream",
        show_default=True,
        help="upstream: what clients send to the backend; downstream: what comes back",
    )
    @TOXICITY
    @CLIENTS
    @click.option("--name", help="its name, unique in the route (default: TYPE_STREAM)")
    def add(
        session: Session,
        app: str,
        route: int,
        type_: ToxicType,
        attributes: Sequence[tuple[str, Any]],
        stream: Stream,
        toxicity: float | None,
        clients: Sequence[str],
        name: str | None,
    ) -> None:
        made = session.client.routes(app)[route].toxics.add(
            type_,
            name=name,
            stream=stream,
            toxicity=1.0 if toxicity is None else toxicity,
            clients=clients,
            **attributes_of(attributes),
        )
        show_toxic(session, made)

    @api_command(
        toxics,
        "update",
        help="Change a toxic, live: the attributes given (the others keep their values), "
        "and its toxicity and clients if given (PATCH .../toxics/NAME). Its type and stream "
        "cannot change.",
    )
    @APP
    @ROUTE
    @NAME
    @ATTR
    @TOXICITY
    @CLIENTS
    @click.option(
        "--all-clients",
        is_flag=True,
        help="every connection meets it again (clients: [])",
    )
    def update(
        session: Session,
        app: str,
        route: int,
        name: str,
        attributes: Sequence[tuple[str, Any]],
        toxicity: float | None,
        clients: Sequence[str],
        all_clients: bool,
    ) -> None:
        if clients and all_clients:
            raise click.UsageError("--clients and --all-clients say different things: give one")
        if not (attributes or toxicity is not None or clients or all_clients):
            raise click.UsageError(
                "nothing to change: give --attr NAME=VALUE, --toxicity, --clients or --all-clients"
            )
        changed = session.client.routes(app)[route].toxics.update(
            name,
            toxicity=toxicity,
            clients=[] if all_clients else (list(clients) or None),
            **attributes_of(attributes),
        )
        show_toxic(session, changed)

    @api_command(
        toxics,
        "remove",
        help="Remove a toxic: connections go on without it, what it held passed on in order "
        "(DELETE .../toxics/NAME).",
    )
    @APP
    @ROUTE
    @NAME
    def remove(session: Session, app: str, route: int, name: str) -> None:
        session.client.routes(app)[route].toxics.remove(name)
        session.done(f"toxic {name} of route {route} of app {app} removed")
