"""``restcp cluster reseed|adopt``: client subcommands that ask a running node's API.

They find the node as ``restcp serve`` is told where to listen: ``--api`` or ``RESTCP_API``
(``127.0.0.1:8001`` by default, or a full ``http://`` URL), and send the admin token read
from ``--api-token-file``, ``RESTCP_API_TOKEN`` or ``RESTCP_API_TOKEN_FILE`` (none: no
token). The answer is printed as JSON on stdout; the exit status is 0 when every node asked
answered 2xx, 1 otherwise (the problem's detail goes to stderr). They speak to the API
through restcp.client, as any program would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from restcp.client import ApiError, Client, Unreachable
from restcp.settings import parse_api_token, read_token_file

ACTIONS = {
    "reseed": "write this node's snapshot (the routes it serves, with their ids, ports and "
    "backends) back into a Redis that lost them, or that holds another cluster epoch; then "
    "follow Redis again. Routes Redis holds with other content are not overwritten: they are "
    "reported as conflicts (exit 1) and the node keeps serving its snapshot",
    "adopt": "follow Redis's state as it is now, giving up the routes this node served that "
    "Redis does not have (the operator's answer to an epoch the node does not know)",
}


def add_commands(commands: Any) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="act on a running node's cluster (Redis store): reseed, adopt",
        description="Ask a running node (its API) to act on its cluster state; "
        "docs/cluster.md explains when.",
    )
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in ACTIONS.items():
        action = actions.add_parser(name, help=text.split(";")[0], description=text)
        action.add_argument(
            "--api",
            default=os.environ.get("RESTCP_API", "127.0.0.1:8001"),
            metavar="HOST:PORT|URL",
            help="the node's API (RESTCP_API; %(default)s)",
        )
        action.add_argument(
            "--api-token-file",
            metavar="PATH",
            help="read the admin token from this file (else RESTCP_API_TOKEN or "
            "RESTCP_API_TOKEN_FILE; none: no token)",
        )
        action.add_argument(
            "--all",
            action="store_true",
            help="every live node that GET /nodes of --api lists, one after the other",
        )
        action.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="how long to wait for each node's answer (%(default)s)",
        )


def _token(args: argparse.Namespace) -> str | None:
    path = args.api_token_file or os.environ.get("RESTCP_API_TOKEN_FILE") or None
    if path is not None:
        return read_token_file(path)
    token = os.environ.get("RESTCP_API_TOKEN") or None
    return None if token is None else parse_api_token(token)


def _ask(target: str, token: str | None, args: argparse.Namespace) -> tuple[bool, Any]:
    """(done, the report or the problem document) of one node; Unreachable raises."""
    with Client(target, token, timeout=args.timeout) as node:
        try:
            report = node.reseed() if args.action == "reseed" else node.adopt()
        except Unreachable:
            raise  # the command's answer, not this node's
        except ApiError as err:
            print(f"{target}: {err.status} {err.detail}", file=sys.stderr)
            return False, err.body
    return True, report.model_dump(mode="json", exclude_unset=True)


def run(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
        client = Client(args.api, token, timeout=args.timeout)
    except ValueError as err:
        print(f"restcp cluster {args.action}: {err}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    failed = False
    with client:
        try:
            targets = [client.url]
            if args.all:
                targets = [node.api.rstrip("/") for node in client.nodes() if node.api]
            for target in targets:
                done, results[target] = _ask(target, token, args)
                failed = failed or not done
        except Unreachable as err:
            print(f"restcp cluster {args.action}: {err.detail}", file=sys.stderr)
            return 1
        except ApiError as err:  # from GET /nodes
            print(f"GET {client.url}/nodes: {err.status} {err.detail}", file=sys.stderr)
            return 1
    print(json.dumps(results if args.all else results[client.url], indent=2))
    return 1 if failed else 0
