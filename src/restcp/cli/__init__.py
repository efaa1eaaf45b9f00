"""The ``restcp`` command, on Click: a node (``serve``), its cluster (``cluster``), and a
command for each resource of its API, built on the Python client (restcp.client).

    restcp serve [FLAGS]                          serve.py: run a node
    restcp cluster reseed|adopt                   cluster.py
    restcp apps|routes|backends|tokens ...        resources.py: the API's resources
    restcp toxics ...                             toxics.py: a route's toxics
    restcp nodes                                  resources.py
    restcp status                                 status.py: this node at a glance
    restcp top                                    top.py: routes and backends, live, with rates
    restcp completion bash|zsh|fish               the shell completion script
    restcp _worker INDEX FD PARENT LOOP           internal: a worker process of serve --workers

Exit status: 0 done, 1 refused (by the API, or the node could not start), 2 usage.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from restcp import __version__
from restcp.cli import resources, status, top
from restcp.cli.base import CONTEXT, Commands
from restcp.cli.cluster import cluster
from restcp.cli.serve import LOOPS, runner, serve

DESCRIPTION = """\
restcp: a REST-driven TCP proxy and layer-4 load balancer.

Create a route through the HTTP API and restcp opens a TCP port for it; every client that
connects is relayed to one of the route's backends, which you attach, replace and detach
through the same API, live:

\b
  curl -XPUT http://localhost:8001/apps/123/routes
  curl -XPUT -d '{"ip": "127.0.0.1", "port": 8888}' http://localhost:8001/apps/123/routes/1/backends

or with the commands below, which speak to the same API (--url, RESTCP_URL):

\b
  restcp routes create 123
  restcp backends add 123 1 127.0.0.1 8888
"""


@click.group(cls=Commands, help=DESCRIPTION, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="restcp", message="%(prog)s %(version)s")
def root() -> None:
    pass


root.add_command(serve)
root.add_command(cluster)
resources.register(root)
status.register(root)
top.register(root)


@root.command(
    "completion",
    context_settings=CONTEXT,
    help="Print the shell completion script of restcp, to source from your shell's start-up "
    'file: eval "$(restcp completion bash)" (zsh: the same; fish: restcp completion fish '
    "| source).",
    short_help="the shell completion script: bash, zsh or fish",
)
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # every choice above is one of Click's shells
    click.echo(complete(root, {}, "restcp", "_RESTCP_COMPLETE").source())


# Internal: a worker process of `restcp serve --workers N`, started by the node's process
# (workers/supervisor.py). Hidden: no help, usage error or completion lists it.
@root.command("_worker", hidden=True, add_help_option=False)
@click.argument("index", type=int)
@click.argument("channel", type=int)
@click.argument("parent", type=int)
@click.argument("loop", type=click.Choice(("auto", *LOOPS)))
def worker(index: int, channel: int, parent: int, loop: str) -> None:
    from restcp import workers

    raise SystemExit(workers.main(index, channel, parent, runner(loop)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``restcp ARGV`` (the command line's by default); its exit status."""
    try:
        root.main(args=None if argv is None else list(argv), prog_name="restcp")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        click.echo(done.code, err=True)
        return 1
    return 0
