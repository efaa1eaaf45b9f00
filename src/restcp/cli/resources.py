"""The commands of the API's resources, addressed positionally as its paths are:

    restcp apps list                              GET    /apps
    restcp routes list|create APP                 GET|PUT /apps/APP/routes
    restcp routes show|update|delete APP ROUTE    GET|PATCH|DELETE /apps/APP/routes/ROUTE
    restcp backends list APP ROUTE                GET    .../routes/ROUTE/backends
    restcp backends add APP ROUTE IP PORT         PUT    .../routes/ROUTE/backends
    restcp backends show|replace|update|delete|drain|enable|disable APP ROUTE BACKEND
    restcp routes down|up APP ROUTE               PATCH  .../routes/ROUTE {"enabled": ...}
    restcp toxics ...                             toxics.py: .../routes/ROUTE/toxics
    restcp tokens list|create APP, delete APP ID  /apps/APP/tokens
    restcp certificates list, show|remove NAME   GET /certificates, GET|DELETE .../NAME
    restcp certificates add|replace NAME --cert FILE --key FILE   POST|PUT /certificates
    restcp nodes                                  GET    /nodes

Each is a few lines over the client (restcp.client): it makes the call, then shows the
API's model of the answer, as a table or as the API's own JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from restcp.cli import toxics
from restcp.cli.base import Session, api_command, group
from restcp.cli.fields import (
    BACKEND_ADDRESS,
    BACKEND_SETTINGS,
    ROUTE_PLACE,
    ROUTE_SETTINGS,
    given,
    options,
)
from restcp.cli.output import fields, table
from restcp.cli.toxics import toxics_table
from restcp.model import AdminState

if TYPE_CHECKING:
    from rich.table import Table

    from restcp.api.schemas import BackendOut, CertificateOut, RouteOut
    from restcp.client import Backend, Route

APP = click.argument("app")
ROUTE = click.argument("route", type=int)
BACKEND = click.argument("backend", type=int)


# A route's fields that ``routes show`` lists as tables of their own, under its settings.
LISTED = ("backends", "toxics")


def address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def health_counts(route: RouteOut) -> dict[str, int]:
    """How many of the route's backends are up, down and not known yet."""
    counts = {"up": 0, "down": 0, "unknown": 0}
    for backend in route.backends:
        counts[backend.health] += 1
    return counts


def routes_table(routes: list[RouteOut], title: str | None = None) -> Table:
    columns = ("ID", "URL", "BALANCE", "BACKENDS", "UP", "DOWN", "CONNECTIONS")
    rows = []
    for route in routes:
        counts = health_counts(route)
        connections = sum(backend.active_connections for backend in route.backends)
        rows.append(
            (route.id, route.url, route.balance, len(route.backends), counts["up"],
             counts["down"], connections)
        )  # fmt: skip
    return table(columns, rows, title)


def backends_table(backends: list[BackendOut], title: str | None = None) -> Table:
    columns = ("ID", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "CONNECTIONS", "REASON")
    rows = [
        (b.id, address(b.ip, b.port), b.weight, b.state, b.health, b.active_connections,
         b.health_reason or None)
        for b in backends
    ]  # fmt: skip
    return table(columns, rows, title)


def show_route(session: Session, route: Route[Any]) -> None:
    info = route.info
    assert info is not None
    data = info.model_dump(mode="json")
    settings = [(name, value) for name, value in data.items() if name not in LISTED]
    session.show(
        data,
        fields(settings),
        backends_table(info.backends, "backends"),
        toxics_table(info.toxics, "toxics"),
    )


def show_backend(session: Session, backend: Backend[Any]) -> None:
    info = backend.info
    assert info is not None
    data = info.model_dump(mode="json")
    shown: dict[str, Any] = dict(data)
    if info.health_changed_at is not None:
        when = datetime.fromtimestamp(info.health_changed_at).isoformat(" ", "seconds")
        shown["health_changed_at"] = when
    shown["replaced"] = [
        f"{address(r.ip, r.port)} ({r.active_connections} open)" for r in info.replaced
    ]
    session.show(data, fields(shown.items()))


def register(root: click.Group) -> None:
    """Add the resource commands to ``root``."""
    _apps(root)
    _routes(root)
    _backends(root)
    toxics.register(root)
    _tokens(root)
    _certificates(root)

    @api_command(
        root,
        "nodes",
        help="The cluster's live nodes (GET /nodes); with an embedded store, this one.",
        short_help="the cluster's live nodes",
    )
    def nodes(session: Session) -> None:
        found = session.client.nodes()
        rows = [
            (n.id, n.api, n.frontend_ips, [lease.ip for lease in n.leases], n.routes_serving,
             None if n.last_seen is None else f"{n.last_seen:.1f}s ago")
            for n in found
        ]  # fmt: skip
        session.show(
            [n.model_dump(mode="json") for n in found],
            table(("ID", "API", "FRONTEND IPS", "LEASES", "ROUTES", "SEEN"), rows),
        )


def _apps(root: click.Group) -> None:
    apps = group("apps", "Apps: every app that has had a route.", "the apps: list", root)

    @api_command(apps, "list", help="Every app, with its route count (GET /apps).")
    def list_apps(session: Session) -> None:
        found = session.client.apps()
        session.show(
            [app.model_dump(mode="json") for app in found],
            table(("APP", "ROUTES"), [(app.app, app.routes) for app in found]),
        )


def _routes(root: click.Group) -> None:
    routes = group(
        "routes",
        "Routes: an app's frontend addresses, relayed to its backends, and their settings.",
        "an app's routes: list, show, create, update, delete, down, up",
        root,
    )

    @api_command(routes, "list", help="The app's routes (GET /apps/APP/routes).")
    @APP
    def list_routes(session: Session, app: str) -> None:
        found = [route.info for route in session.client.routes(app).list()]
        session.show(
            [info.model_dump(mode="json") for info in found if info is not None],
            routes_table([info for info in found if info is not None]),
        )

    @api_command(routes, "show", help="One route, with its backends (GET .../routes/ROUTE).")
    @APP
    @ROUTE
    def show(session: Session, app: str, route: int) -> None:
        show_route(session, session.client.routes(app).get(route))

    @api_command(
        routes,
        "create",
        help="A new route of the app, bound and accepting when this returns "
        "(PUT /apps/APP/routes). In a cluster, a route for another node's frontend IP is "
        "waited for until that node serves it.",
    )
    @APP
    @options([*ROUTE_PLACE, *ROUTE_SETTINGS])
    def create(session: Session, app: str, **arguments: Any) -> None:
        from restcp.client import Provisioning

        body = given(arguments, [*ROUTE_PLACE, *ROUTE_SETTINGS])
        try:
            made = session.client.routes(app).create(**body)
        except Provisioning as pending:
            click.echo(f"{pending.detail}: waiting for it", err=True)
            made = pending.route.wait()
        show_route(session, made)

    @api_command(
        routes,
        "update",
        help="Change a route's settings, live; those not given keep their values "
        "(PATCH .../routes/ROUTE).",
    )
    @APP
    @ROUTE
    @options(ROUTE_SETTINGS)
    def update(session: Session, app: str, route: int, **arguments: Any) -> None:
        body = given(arguments, ROUTE_SETTINGS)
        if not body:
            raise click.UsageError("nothing to change: give a setting, or --set FIELD=VALUE")
        show_route(session, session.client.routes(app)[route].update(**body))

    @api_command(
        routes,
        "delete",
        help="Delete a route: its port refuses new clients once this returns; open "
        "connections finish (DELETE .../routes/ROUTE).",
    )
    @APP
    @ROUTE
    def delete(session: Session, app: str, route: int) -> None:
        session.client.routes(app)[route].delete()
        session.done(f"route {route} of app {app} deleted")

    def enabled_command(name: str, enabled: bool, text: str) -> None:
        @api_command(routes, name, help=text)
        @APP
        @ROUTE
        def change(session: Session, app: str, route: int) -> None:
            show_route(session, session.client.routes(app)[route].update(enabled=enabled))

    enabled_command(
        "down",
        False,
        "Take a route down (toxiproxy's 'down'): its port refuses new clients and its open "
        "connections close; it keeps its backends, toxics and settings (PATCH enabled: false).",
    )
    enabled_command(
        "up",
        True,
        "Bring a route that was down back, on the same port (PATCH enabled: true).",
    )


def _backends(root: click.Group) -> None:
    backends = group(
        "backends",
        "Backends: where a route's clients are relayed to.",
        "a route's backends: list, show, add, replace, update, delete, drain, enable, disable",
        root,
    )

    def handle(session: Session, app: str, route: int, backend: int) -> Backend[Any]:
        return session.client.routes(app)[route].backends[backend]

    @api_command(backends, "list", help="The route's backends (GET .../routes/ROUTE/backends).")
    @APP
    @ROUTE
    def list_backends(session: Session, app: str, route: int) -> None:
        found = [b.info for b in session.client.routes(app)[route].backends.list()]
        infos = [info for info in found if info is not None]
        session.show([info.model_dump(mode="json") for info in infos], backends_table(infos))

    @api_command(backends, "show", help="One backend, with its health and load.")
    @APP
    @ROUTE
    @BACKEND
    def show(session: Session, app: str, route: int, backend: int) -> None:
        show_backend(session, handle(session, app, route, backend).refresh())

    @api_command(
        backends,
        "add",
        help="Attach a backend: IP is an address, or a DNS name resolved at every connect "
        "(PUT .../routes/ROUTE/backends).",
    )
    @APP
    @ROUTE
    @click.argument("ip")
    @click.argument("port", type=int)
    @options(BACKEND_SETTINGS)
    def add(session: Session, app: str, route: int, ip: str, port: int, **arguments: Any) -> None:
        body = given(arguments, BACKEND_SETTINGS)
        show_backend(session, session.client.routes(app)[route].backends.add(ip, port, **body))

    @api_command(
        backends,
        "replace",
        help="Give a backend a new address; fields not given take their defaults. Open "
        "connections finish on the old one (POST .../backends/BACKEND).",
    )
    @APP
    @ROUTE
    @BACKEND
    @click.argument("ip")
    @click.argument("port", type=int)
    @options(BACKEND_SETTINGS)
    def replace(
        session: Session, app: str, route: int, backend: int, ip: str, port: int, **arguments: Any
    ) -> None:
        body = given(arguments, BACKEND_SETTINGS)
        show_backend(session, handle(session, app, route, backend).replace(ip, port, **body))

    @api_command(
        backends,
        "update",
        help="Change a backend's fields, live; those not given keep their values "
        "(PATCH .../backends/BACKEND).",
    )
    @APP
    @ROUTE
    @BACKEND
    @options([*BACKEND_ADDRESS, *BACKEND_SETTINGS])
    def update(session: Session, app: str, route: int, backend: int, **arguments: Any) -> None:
        body = given(arguments, [*BACKEND_ADDRESS, *BACKEND_SETTINGS])
        if not body:
            raise click.UsageError("nothing to change: give a field, or --set FIELD=VALUE")
        show_backend(session, handle(session, app, route, backend).update(**body))

    @api_command(
        backends,
        "delete",
        help="Detach a backend: new clients go to the others, open connections finish.",
    )
    @APP
    @ROUTE
    @BACKEND
    def delete(session: Session, app: str, route: int, backend: int) -> None:
        handle(session, app, route, backend).delete()
        session.done(f"backend {backend} of route {route} of app {app} deleted")

    def state_command(name: str, state: AdminState, text: str) -> None:
        @api_command(backends, name, help=text)
        @APP
        @ROUTE
        @BACKEND
        def change(session: Session, app: str, route: int, backend: int) -> None:
            show_backend(session, handle(session, app, route, backend).update(state=state))

    @api_command(
        backends,
        "drain",
        help="Let a backend's open connections finish, sending it no new clients "
        "(PATCH state: drain).",
    )
    @APP
    @ROUTE
    @BACKEND
    @click.option(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="close what is still open this long after (default: the backend's own)",
    )
    def drain(
        session: Session, app: str, route: int, backend: int, drain_timeout: float | None
    ) -> None:
        body: dict[str, Any] = {"state": "drain"}
        if drain_timeout is not None:
            body["drain_timeout"] = drain_timeout
        show_backend(session, handle(session, app, route, backend).update(**body))

    state_command("enable", "enabled", "Give a backend new clients again (PATCH state: enabled).")
    state_command(
        "disable",
        "disabled",
        "Take a backend out: no new clients, its open connections closed at once "
        "(PATCH state: disabled).",
    )


def _tokens(root: click.Group) -> None:
    tokens = group(
        "tokens",
        "Tokens: an app's own API tokens, which reach its routes only (the admin token "
        "manages them).",
        "an app's API tokens: list, create, delete",
        root,
    )

    @api_command(tokens, "list", help="The app's tokens (never their secret).")
    @APP
    def list_tokens(session: Session, app: str) -> None:
        found = session.client.tokens(app).list()
        session.show(
            [token.model_dump(mode="json") for token in found],
            table(("ID", "CREATED"), [(t.id, t.created_at.isoformat()) for t in found]),
        )

    @api_command(
        tokens,
        "create",
        help="A new token of the app: it reaches that app's routes only. Its secret is shown "
        "this once.",
    )
    @APP
    def create(session: Session, app: str) -> None:
        made = session.client.tokens(app).create()
        data = made.model_dump(mode="json")
        session.show(data, fields(data.items()))

    @api_command(tokens, "delete", help="Revoke a token at once.")
    @APP
    @click.argument("token_id", metavar="ID", type=int)
    def delete(session: Session, app: str, token_id: int) -> None:
        session.client.tokens(app).delete(token_id)
        session.done(f"token {token_id} of app {app} deleted")


def _certificates(root: click.Group) -> None:
    certificates = group(
        "certificates",
        "TLS certificates, by name, for routes that terminate TLS (docs/tls.md); the admin "
        "token manages them, and their keys are never shown.",
        "TLS certificates: list, show, add, replace, remove",
        root,
    )
    pem = click.Path(exists=True, dir_okay=False, readable=True)
    cert_option = click.option(
        "--cert", "cert_file", required=True, type=pem,
        help="PEM file of the chain: the certificate first, then its intermediates.",
    )  # fmt: skip
    key_option = click.option(
        "--key", "key_file", required=True, type=pem, help="PEM file of its private key."
    )

    def show(session: Session, info: CertificateOut) -> None:
        data = info.model_dump(mode="json")
        session.show(data, fields((k, v) for k, v in data.items() if k != "cert"))

    @api_command(certificates, "list", help="Every certificate: its names and expiry.")
    def list_certificates(session: Session) -> None:
        found = session.client.certificates.list()
        rows = [(c.name, ", ".join(c.names), c.not_after.isoformat(), c.issuer) for c in found]
        session.show(
            [c.model_dump(mode="json") for c in found],
            table(("NAME", "NAMES", "NOT AFTER", "ISSUER"), rows),
        )

    @api_command(certificates, "show", help="One certificate (not its key).")
    @click.argument("name")
    def show_certificate(session: Session, name: str) -> None:
        show(session, session.client.certificates.get(name))

    @api_command(certificates, "add", help="Add a certificate and its key under NAME.")
    @click.argument("name")
    @cert_option
    @key_option
    def add(session: Session, name: str, cert_file: str, key_file: str) -> None:
        cert, key = _read(cert_file), _read(key_file)
        show(session, session.client.certificates.add(name, cert, key))

    @api_command(
        certificates,
        "replace",
        help="Replace the certificate NAME (or add it): new handshakes use it at once, open "
        "connections keep theirs.",
    )
    @click.argument("name")
    @cert_option
    @key_option
    def replace(session: Session, name: str, cert_file: str, key_file: str) -> None:
        cert, key = _read(cert_file), _read(key_file)
        show(session, session.client.certificates.put(name, cert, key))

    @api_command(certificates, "remove", help="Remove a certificate no route uses.")
    @click.argument("name")
    def remove(session: Session, name: str) -> None:
        session.client.certificates.remove(name)
        session.done(f"certificate {name} removed")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()
