"""Click parameter types shared by the commands: a parse function as a type, and an option
read from a RESTCP_* variable that names the variable when its value is refused.

A parse function (``settings.parse_port_range``, ...) raises ValueError with the sentence to
act on; ``Parsed`` turns it into Click's usage error, so ``--port-range 5-1`` and
``RESTCP_PORT_RANGE=5-1`` are both refused before anything starts, naming the flag (and
the variable), and exit 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import click
from click.core import ParameterSource


class Parsed(click.ParamType[Any]):
    """A value read by ``parse``: its ValueError is the usage error's message. A variable of
    a repeatable option holds a comma-separated list."""

    def __init__(self, parse: Callable[[str], Any], name: str) -> None:
        self.parse = parse
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default already parsed, or a value converted once already
        try:
            return self.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [item.strip() for item in rv.split(",") if item.strip()]


class EnvOption(click.Option):
    """An option that may come from its ``envvar``: a value from there that is refused says
    which variable held it (``RESTCP_LOG_LEVEL='loud': ...``), beside the flag's name.
    Click takes an empty variable for an unset one; with ``empty_is_value`` it is the value
    "" (``RESTCP_SNAPSHOT=`` keeps no snapshot, as ``off`` does)."""

    def __init__(self, *args: Any, empty_is_value: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_is_value = empty_is_value

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        if self.empty_is_value and isinstance(self.envvar, str):
            return os.environ.get(self.envvar)
        return super().resolve_envvar_value(ctx)

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as err:
            variable = self.envvar if isinstance(self.envvar, str) else None
            source = ctx.get_parameter_source(self.name) if self.name else None
            if variable and source is ParameterSource.ENVIRONMENT:
                held = os.environ.get(variable, "")
                raise click.BadParameter(
                    f"{variable}={held!r}: {err.message}", ctx=err.ctx, param=err.param or self
                ) from None
            raise


class Nullable(click.ParamType[Any]):
    """``inner``, or ``none`` for JSON null (a field that may be unset: a limit removed)."""

    def __init__(self, inner: click.ParamType[Any]) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        inner = self.inner.get_metavar(param, ctx)
        return None if inner is None else inner.replace("]", "|none]").replace("}", "|none}")

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[click.shell_completion.CompletionItem]:
        items = self.inner.shell_complete(ctx, param, incomplete)
        if "none".startswith(incomplete):
            items.append(click.shell_completion.CompletionItem("none"))
        return items


class JsonText(click.ParamType[Any]):
    """A JSON document given as text: ``'{"interval": 1}'``."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError as err:
            self.fail(f"{value!r} is not JSON: {err}", param, ctx)


def json_or_text(text: str) -> Any:
    """A ``--set`` value: JSON where it parses (``600``, ``true``, ``null``, ``{...}``), else
    the text itself (``round_robin``), so that strings need no quotes."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Assignment(click.ParamType[Any]):
    """``FIELD=VALUE`` (``--set idle_timeout=600``) as a (field, value) pair."""

    name = "field=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        field, sep, text = value.partition("=")
        if not sep or not field.strip():
            self.fail(f"{value!r} is not FIELD=VALUE", param, ctx)
        return field.strip(), json_or_text(text)
