"""``restcp cluster reseed|adopt``: ask a running node's API to act on its cluster state.

They find the node as ``restcp serve`` is told where to listen: ``--api`` or ``RESTCP_API``
(``127.0.0.1:8001`` by default, or a full ``http://`` URL), and send the admin token read
from ``--api-token-file``, ``RESTCP_API_TOKEN`` or ``RESTCP_API_TOKEN_FILE`` (none: no
token). The answer is printed as JSON on stdout; the exit status is 0 when every node asked
answered 2xx, 1 otherwise (the problem's detail goes to stderr), 2 for a bad flag. They
speak to the API through restcp.client, as any program would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from restcp.settings import parse_api_token, read_token_file

ACTIONS = {
    "reseed": "write this node's snapshot (the routes it serves, with their ids, ports and "
    "backends) back into a Redis that lost them, or that holds another cluster epoch; then "
    "follow Redis again. Routes Redis holds with other content are not overwritten: they are "
    "reported as conflicts (exit 1) and the node keeps serving its snapshot",
    "adopt": "follow Redis's state as it is now, giving up the routes this node served that "
    "Redis does not have (the operator's answer to an epoch the node does not know)",
}


def _token(path: str | None) -> str | None:
    path = path or os.environ.get("RESTCP_API_TOKEN_FILE") or None
    if path is not None:
        return read_token_file(path)
    token = os.environ.get("RESTCP_API_TOKEN") or None
    return None if token is None else parse_api_token(token)


def _ask(action: str, target: str, token: str | None, timeout: float) -> tuple[bool, Any]:
    """(done, the report or the problem document) of one node; Unreachable raises."""
    from restcp.client import ApiError, Client, Unreachable

    with Client(target, token, timeout=timeout) as node:
        try:
            report = node.reseed() if action == "reseed" else node.adopt()
        except Unreachable:
            raise  # the command's answer, not this node's
        except ApiError as err:
            click.echo(f"{target}: {err.status} {err.detail}", err=True)
            return False, err.body
    return True, report.model_dump(mode="json", exclude_unset=True)


def run(action: str, api: str, api_token_file: str | None, every: bool, timeout: float) -> int:
    """The exit status of ``restcp cluster ACTION``, its report printed."""
    from restcp.client import ApiError, Client, Unreachable

    try:
        token = _token(api_token_file)
        client = Client(api, token, timeout=timeout)
    except ValueError as err:
        click.echo(f"restcp cluster {action}: {err}", err=True)
        return 2
    results: dict[str, Any] = {}
    failed = False
    with client:
        try:
            targets = [client.url]
            if every:
                targets = [node.api.rstrip("/") for node in client.nodes() if node.api]
            for target in targets:
                done, results[target] = _ask(action, target, token, timeout)
                failed = failed or not done
        except Unreachable as err:
            click.echo(f"restcp cluster {action}: {err.detail}", err=True)
            return 1
        except ApiError as err:  # from GET /nodes
            click.echo(f"GET {client.url}/nodes: {err.status} {err.detail}", err=True)
            return 1
    click.echo(json.dumps(results if every else results[client.url], indent=2))
    return 1 if failed else 0


@click.group(
    help="Ask a running node (its API) to act on its cluster state; docs/cluster.md explains when.",
    short_help="act on a running node's cluster (Redis store): reseed, adopt",
)
def cluster() -> None:
    pass


def _action(name: str, text: str) -> None:
    @click.option(
        "--api",
        envvar="RESTCP_API",
        default="127.0.0.1:8001",
        metavar="HOST:PORT|URL",
        help="the node's API (RESTCP_API; 127.0.0.1:8001)",
    )
    @click.option(
        "--api-token-file",
        metavar="PATH",
        help="read the admin token from this file (else RESTCP_API_TOKEN or "
        "RESTCP_API_TOKEN_FILE; none: no token)",
    )
    @click.option(
        "--all",
        "every",
        is_flag=True,
        help="every live node that GET /nodes of --api lists, one after the other",
    )
    @click.option(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for each node's answer (60.0)",
    )
    def command(api: str, api_token_file: str | None, every: bool, timeout: float) -> None:
        raise SystemExit(run(name, api, api_token_file, every, timeout))

    decorate: Callable[[Callable[..., None]], click.Command] = cluster.command(
        name, help=text, short_help=text.split(";")[0]
    )
    decorate(command)


for _name, _text in ACTIONS.items():
    _action(_name, _text)
