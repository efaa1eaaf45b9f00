"""The client's typed keyword arguments name exactly the fields of the API's request bodies,
and the client loads without the server."""

from __future__ import annotations

import subprocess
import sys
import typing
from importlib import resources

import pytest
from pydantic import BaseModel

from restcp.api.schemas import BackendBody, BackendPatchBody, HealthCheckBody, RouteSettingsBody
from restcp.client.fields import BackendChanges, BackendFields, HealthCheckFields, RouteFields


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
