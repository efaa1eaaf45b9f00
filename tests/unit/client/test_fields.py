"""The client's typed keyword arguments name exactly the fields of the API's request bodies,
and the client loads without the server."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from collections.abc import Callable
from importlib import resources

import pytest
from pydantic import BaseModel

from restcp.api.schemas import BackendBody, BackendPatchBody, HealthCheckBody, RouteSettingsBody
from restcp.api.toxics import ToxicBody, ToxicPatchBody
from restcp.client.fields import BackendChanges, BackendFields, HealthCheckFields, RouteFields
from restcp.client.resources import Route
from restcp.client.toxics import Toxic, Toxics


@pytest.mark.parametrize(
    ("fields", "body", "besides"),
    [
        (RouteFields, RouteSettingsBody, set()),
        (HealthCheckFields, HealthCheckBody, set()),
        (BackendFields, BackendBody, {"ip", "port"}),
        (BackendChanges, BackendPatchBody, set()),
    ],
)
def test_keyword_arguments_are_the_body_fields(
    fields: type, body: type[BaseModel], besides: set[str]
) -> None:
    assert set(typing.get_type_hints(fields)) | besides == set(body.model_fields)


@pytest.mark.parametrize(
    ("plan", "body", "besides"),
    [
        # A toxic's attributes are the method's other keywords (latency=200).
        (Toxics.add.plan, ToxicBody, {"attributes"}),
        (Route.toxic.plan, ToxicBody, {"attributes"}),
        # A toxic's type and stream cannot change: a PATCH may only repeat them.
        (Toxic.update.plan, ToxicPatchBody, {"attributes", "type", "stream"}),
    ],
)
def test_toxic_parameters_are_the_body_fields(
    plan: Callable[..., object], body: type[BaseModel], besides: set[str]
) -> None:
    assert _named_parameters(plan) | besides == set(body.model_fields)


def test_toxics_update_takes_the_name_and_what_toxic_update_takes() -> None:
    assert _named_parameters(Toxics.update.plan) == {"name"} | _named_parameters(Toxic.update.plan)


def _named_parameters(plan: Callable[..., object]) -> set[str]:
    parameters = inspect.signature(plan).parameters.values()
    return {p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name != "self"}


def test_the_client_imports_neither_the_server_nor_its_web_framework() -> None:
    code = (
        "import sys, restcp; assert 'httpx' not in sys.modules, 'restcp imports the client'; "
        "from restcp import Client, AsyncClient; import restcp.pytest_plugin; "
        "server = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'uvloop', 'redis') "
        "or m in ('restcp.node', 'restcp.api.app', 'restcp.store', 'restcp.proxy')]; "
        "assert not server, server"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_package_says_it_is_typed() -> None:
    assert resources.files("restcp").joinpath("py.typed").is_file()
