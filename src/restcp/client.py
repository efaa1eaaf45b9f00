"""``restcp cluster reseed|adopt``: client subcommands that ask a running node's API.

They find the node as ``restcp serve`` is told where to listen: ``--api`` or ``RESTCP_API``
(``127.0.0.1:8001`` by default, or a full ``http://`` URL), and send the admin token read
from ``--api-token-file``, ``RESTCP_API_TOKEN`` or ``RESTCP_API_TOKEN_FILE`` (none: no
token). The answer is printed as JSON on stdout; the exit status is 0 when every node asked
answered 2xx, 1 otherwise (the problem's detail goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

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


def _base(api: str) -> str:
    if api.startswith(("http://", "https://")):
        return api.rstrip("/")
    return "http://" + api


def _token(args: argparse.Namespace) -> str | None:
    path = args.api_token_file or os.environ.get("RESTCP_API_TOKEN_FILE") or None
    if path is not None:
        return read_token_file(path)
    token = os.environ.get("RESTCP_API_TOKEN") or None
    return None if token is None else parse_api_token(token)


def _call(method: str, url: str, token: str | None, timeout: float) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, method=method, headers=headers, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, {"detail": body.decode(errors="replace")}


def run(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
    except ValueError as err:
        print(f"restcp cluster {args.action}: {err}", file=sys.stderr)
        return 2
    base = _base(args.api)
    try:
        targets = [base]
        if args.all:
            status, nodes = _call("GET", base + "/nodes", token, args.timeout)
            if status != 200:
                print(f"GET {base}/nodes: {status} {_detail(nodes)}", file=sys.stderr)
                return 1
            targets = [str(n["api"]).rstrip("/") for n in nodes if n.get("api")]
        results: dict[str, Any] = {}
        failed = False
        for target in targets:
            status, body = _call("POST", f"{target}/cluster/{args.action}", token, args.timeout)
            results[target] = body
            if not 200 <= status < 300:
                failed = True
                print(f"{target}: {status} {_detail(body)}", file=sys.stderr)
    except (OSError, ValueError) as err:
        print(f"restcp cluster {args.action}: cannot reach {base}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(results if args.all else results[base], indent=2))
    return 1 if failed else 0


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)
