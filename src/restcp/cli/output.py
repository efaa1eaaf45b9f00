"""What the commands print: human tables (Rich) by default, or the API's own JSON (``-o
json``) or the same as YAML (``-o yaml``) for scripts.

Tables are plain columns under a header, kubectl-style, so that ``grep`` and ``awk`` read
them too: written to a terminal they fit its width, written to a pipe or a file they are
never wrapped, and no line ends in spaces. Cells are text, never Rich markup: a health
reason such as ``[Errno 111] Connection refused`` prints as it is.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

import click

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

Format = Literal["table", "json", "yaml"]
FORMATS: tuple[Format, ...] = ("table", "json", "yaml")

# A table written to a pipe is as wide as its content: no column is folded.
PIPE_WIDTH = 10_000


def dump(data: Any, format: Format) -> str:
    """``data`` (JSON-ready: the API's models dumped in JSON mode) as JSON or YAML text."""
    if format == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(data, indent=2)


def cell(value: Any) -> Text:
    """A value as a table shows it: none as ``-``, numbers without a needless ``.0`` (and
    to the millisecond)."""
    from rich.text import Text

    if value is None:
        shown = "-"
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, float):
        shown = str(int(value)) if value.is_integer() else str(round(value, 3))
    elif isinstance(value, list | tuple):
        shown = ", ".join(str(cell(item)) for item in value) or "-"
    elif isinstance(value, dict):
        shown = json.dumps(value)
    else:
        shown = str(value)
    return Text(shown)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """Columns under a header; ``title`` above them."""
    from rich.table import Table

    grid = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
        header_style="bold",
        title=title,
        title_justify="left",
        title_style="bold",
    )
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    return grid


def fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    """One ``name  value`` line per pair: a single object's fields."""
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in pairs:
        grid.add_row(Text(name), cell(value))
    return grid


def render(*parts: RenderableType, file: TextIO | None = None) -> None:
    """Print ``parts``, a blank line between them: in colour and to the terminal's width on
    a terminal, plain and unwrapped elsewhere."""
    from rich.console import Console

    out = file or sys.stdout
    terminal = out.isatty()
    buffer = io.StringIO()
    console = (
        Console(file=out)
        if terminal
        else Console(file=buffer, width=PIPE_WIDTH, no_color=True, color_system=None)
    )
    for index, part in enumerate(parts):
        if index:
            console.line()
        console.print(part)
    if not terminal:
        click.echo("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()), file=out)
