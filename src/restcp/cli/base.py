"""What every command of the CLI shares: its groups, and the options, client and exit codes
of the commands that call a node's API.

An API command is a function of a ``Session`` (the client, and how to print) and its own
arguments, declared with ``@api_command(group, name)``, which adds ``--url``, ``--token``
and ``-o``, opens the client, and turns the outcome into the exit status:

    0   done
    1   the API refused (its problem's detail on stderr), or could not be reached
        (or, in a cluster, stored a change the serving node has not applied yet: 202)
    2   usage: a missing or malformed argument or option (Click's own)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from restcp.cli.output import FORMATS, Format, dump, render

if TYPE_CHECKING:
    from rich.console import RenderableType

    from restcp.client import ApiError, Client

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Commands(click.Group):
    """A group that lists its commands in the order they were added, and answers an unknown
    one with those a user may type (hidden ones left out)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0]
        if (
            self.get_command(ctx, name) is None
            and not ctx.resilient_parsing
            and not name.startswith("-")
        ):
            visible = [n for n, c in self.commands.items() if not c.hidden]
            choices = ", ".join(f"'{n}'" for n in visible)
            ctx.fail(f"No such command {name!r}: choose from {choices}.")
        return super().resolve_command(ctx, args)


def group(name: str, text: str, short: str, parent: click.Group) -> click.Group:
    """A subcommand group of ``parent`` (``restcp routes``): ``text`` its help, ``short``
    its line in the parent's."""
    made: click.Group = parent.group(
        name, cls=Commands, help=text, short_help=short, context_settings=CONTEXT
    )(lambda: None)
    return made


@dataclass
class Session:
    """One API command's run: the client of the node, and the output format asked for."""

    client: Client
    output: Format

    def show(self, data: Any, *human: RenderableType) -> None:
        """``data`` (JSON-ready) as JSON or YAML, or ``human`` (tables) by default."""
        if self.output == "table":
            render(*human)
        else:
            click.echo(dump(data, self.output))

    def done(self, message: str) -> None:
        """A change that returns nothing (a delete): said to a human, silent to a script."""
        if self.output == "table":
            click.echo(message)


def report(err: ApiError) -> None:
    """The API's refusal on stderr: the request, its status and the problem's detail (which
    names each invalid field of a 422)."""
    click.echo(f"Error: {err}", err=True)


API_OPTIONS = [
    click.option(
        "--url",
        metavar="URL",
        help="the node's API: http://HOST:PORT or HOST:PORT (RESTCP_URL; http://127.0.0.1:8001)",
    ),
    click.option(
        "--token",
        metavar="TOKEN",
        help="sent as 'Authorization: Bearer TOKEN': the admin token or an app's "
        "(RESTCP_TOKEN; none)",
    ),
    click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="tables for people, the API's JSON (or the same as YAML) for scripts",
    ),
]


def api_command(
    parent: click.Group, name: str, **kwargs: Any
) -> Callable[[Callable[..., None]], click.Command]:
    """Declare ``function(session, **arguments)`` as command ``name`` of ``parent``."""

    def decorate(function: Callable[..., None]) -> click.Command:
        @functools.wraps(function)
        def run(url: str | None, token: str | None, output: Format, **arguments: Any) -> None:
            from restcp.client import ApiError, Client

            try:
                client = Client(url, token)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="'--url'") from None
            with client:
                try:
                    function(Session(client, output), **arguments)
                except ApiError as err:
                    report(err)
                    raise SystemExit(1) from None

        for option in reversed(API_OPTIONS):
            run = option(run)
        command = parent.command(name, context_settings=CONTEXT, **kwargs)(run)
        # The command's own arguments and options first, then those every API command has.
        shared = {"url", "token", "output"}
        command.params.sort(key=lambda param: param.name in shared)
        return command

    return decorate
