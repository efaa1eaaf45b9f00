"""``restcp top``: the node's routes and backends, live, with their rates.

Every ``--interval`` it reads the routes (GET /apps, /apps/APP/routes) and the counters
(GET /metrics) and shows them with the rates since the previous read (rates.py). On a
terminal the view is redrawn in place (the terminal's alternate screen, as top's) until
``q`` or Ctrl-C; elsewhere each refresh is printed after the last: tables, or one JSON
document per line (``-o json``), or YAML documents (``-o yaml``), for ``--iterations``
refreshes or until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from restcp.cli.base import Session, api_command
from restcp.cli.output import render, table
from restcp.cli.rates import Reading, frame, reading
from restcp.cli.resources import address
from restcp.cli.status import every_route

if TYPE_CHECKING:
    from rich.console import RenderableType

QUIT_KEYS = ("q", "Q")


def per_second(value: float | None, unit: str = "") -> str | None:
    """A rate for people: ``12.5``, ``3.4 kB``, ``1.2 MB`` (powers of 1000)."""
    if value is None:
        return None
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000 or prefix == "G":
            space = " " if unit else ""
            return f"{value:.1f}{space}{prefix}{unit}" if prefix or unit else f"{value:.1f}"
        value /= 1000
    raise AssertionError("unreachable")


def view(shown: dict[str, Any], url: str, interval: float) -> RenderableType:
    """One refresh as a table: each route, then its backends indented under it."""
    from rich.console import Group
    from rich.text import Text

    rows: list[tuple[Any, ...]] = []
    for route in shown["routes"]:
        rows.append((
            f"{route['app']}/{route['id']}", route["url"], None, route["active"],
            per_second(route["connections_per_s"]), per_second(route["bytes_in_per_s"], "B"),
            per_second(route["bytes_out_per_s"], "B"), route["refused"],
        ))  # fmt: skip
        for b in route["backends"]:
            health = b["health"] if b["state"] == "enabled" else f"{b['health']} ({b['state']})"
            rows.append((
                f"  {b['id']}", address(b["ip"], b["port"]), health, b["active"],
                per_second(b["connections_per_s"]), per_second(b["bytes_in_per_s"], "B"),
                per_second(b["bytes_out_per_s"], "B"), b["failures"],
            ))  # fmt: skip
    columns = ("ROUTE", "URL / BACKEND", "HEALTH", "ACTIVE", "CONN/S", "IN/S", "OUT/S", "FAILED")
    head = Text(f"restcp top  {url}  every {interval:g}s  (q quits)", style="bold")
    return Group(head, table(columns, rows))


class Keys:
    """The keys typed on a terminal's stdin, one at a time, without waiting for Enter."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def wait(self, seconds: float) -> str | None:
        """The first key typed within ``seconds``, or None."""
        ready, _, _ = select.select([self.fd], [], [], max(seconds, 0))
        if not ready:
            return None
        return os.read(self.fd, 1).decode(errors="replace") or None


@contextlib.contextmanager
def keys() -> Iterator[Keys | None]:
    """Keys of the terminal on stdin (put in cbreak mode, and restored after), or None when
    stdin is no terminal. Ctrl-C still interrupts: cbreak keeps the terminal's signals."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait(typed: Keys | None, until: float) -> bool:
    """Wait until ``until`` (monotonic); whether a quit key was typed meanwhile."""
    while (left := until - time.monotonic()) > 0:
        if typed is None:
            time.sleep(left)
            return False
        if typed.wait(left) in QUIT_KEYS:
            return True
    return False


def register(root: click.Group) -> None:
    @api_command(
        root,
        "top",
        help="Routes and backends, live: connections open, and connections and bytes per "
        "second since the previous refresh. On a terminal, q or Ctrl-C quits.",
        short_help="routes and backends, live, with their rates",
    )
    @click.option(
        "--interval",
        type=click.FloatRange(min=0.05),
        default=1.0,
        show_default=True,
        metavar="SECONDS",
        help="time between refreshes",
    )
    @click.option(
        "--iterations",
        type=click.IntRange(min=0),
        default=0,
        metavar="N",
        help="stop after N refreshes (default: 0, until q or Ctrl-C)",
    )
    def top(session: Session, interval: float, iterations: int) -> None:
        with contextlib.suppress(KeyboardInterrupt), interrupted_once():
            _run(session, interval, iterations)


@contextlib.contextmanager
def interrupted_once() -> Iterator[None]:
    """Ctrl-C interrupts top once: from then on SIGINT is ignored, so that a second Ctrl-C,
    typed while the first unwinds, cannot cut short the giving back of the terminal (its
    screen and mode), nor kill the process as it exits (Python's exit puts SIGINT's default
    action back unless it is ignored). Not interrupted, the previous handler is restored."""
    interrupted = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        if not interrupted:
            signal.signal(signal.SIGINT, previous)


def _run(session: Session, interval: float, iterations: int) -> None:
    client = session.client
    live = session.output == "table" and sys.stdout.isatty()
    before: Reading | None = None
    count = 0
    with keys() as typed, contextlib.ExitStack() as stack:
        screen = None
        if live:
            from rich.console import Console
            from rich.live import Live

            screen = stack.enter_context(
                Live(console=Console(), screen=True, auto_refresh=False, transient=True)
            )
        while True:
            due = time.monotonic() + interval
            routes = every_route(client)
            after = reading(client.metrics(), time.monotonic())
            shown = frame(routes, before, after)
            before = after
            count += 1
            if screen is not None:
                screen.update(view(shown, client.url, interval), refresh=True)
            elif session.output == "json":
                click.echo(json.dumps(shown), nl=True)
            elif session.output == "yaml":
                import yaml

                click.echo("---\n" + yaml.safe_dump(shown, sort_keys=False).rstrip("\n"))
            else:
                if count > 1:
                    click.echo()
                render(view(shown, client.url, interval))
            sys.stdout.flush()
            if iterations and count >= iterations:
                return
            if wait(typed, due):
                return
