"""The OpenAPI 3.1 document, generated from the route table (endpoints.py) and the pydantic
models of schemas.py: request bodies from the models that validate them, responses from the
models that describe them. Nothing here is written by hand per endpoint, so the document
changes when the table or a model does.

A node serves the document of its configuration: with tokens (``--api-token``) every
endpoint but the public ones needs the bearer scheme and may answer 401; without, none does.
Each 201 links to the operations on what it created (OpenAPI links), so that clients and
stateful testers know where a new route's or backend's id (or a toxic's name) goes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from restcp import __version__
from restcp.api.endpoints import ENDPOINTS, Endpoint, Reply, problems_of
from restcp.api.schemas import APP_ID, DOT_SEGMENTS, Problem
from restcp.api.toxics import NAME_SCHEMA

_REF = "#/components/schemas/{model}"
# JSON Schema of each path parameter, as api/app.py checks it.
_PARAMETERS: dict[str, dict[str, Any]] = {
    "app": {
        "type": "string",
        "pattern": f"^{APP_ID.pattern}$",
        "not": {"enum": list(DOT_SEGMENTS)},
    },
    "route": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    "backend": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    "toxic": NAME_SCHEMA,
    "token": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    "certificate": {
        "type": "string",
        "pattern": f"^{APP_ID.pattern}$",
        "not": {"enum": list(DOT_SEGMENTS)},
    },
    # A file name of the dashboard's: no directories.
    "asset": {"type": "string", "pattern": r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"},
}
_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "the path of what was created",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": 'Bearer, with error="invalid_token" when the token sent is not valid',
        "required": True,
        "schema": {"type": "string"},
    },
}
_DESCRIPTION = """\
A REST-driven TCP proxy and layer-4 load balancer: create a route and restcp opens a TCP port
for it; every client that connects is relayed to one of the route's backends.

Request bodies are JSON whatever the Content-Type says. Errors are RFC 9457 problem documents.
"""
_AUTH_ON = """\
This node asks for tokens (`--api-token`): every endpoint but `/healthz` and this document
needs `Authorization: Bearer TOKEN`, the admin token or a token of the app in the path
(`POST /apps/{app}/tokens`)."""
_AUTH_OFF = """\
This node asks for no token (it was started without `--api-token`): every caller may do
everything. A node started with one serves a document that says so."""


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [Problem]
    for endpoint in ENDPOINTS:
        for model in (endpoint.body, *(r.model for r in endpoint.replies)):
            if model is not None and model not in found:
                found.append(model)
    return found


def _content(reply: Reply) -> dict[str, Any]:
    schema: dict[str, Any]
    if reply.model is not None:
        schema = {"$ref": _REF.format(model=reply.model.__name__)}
        if reply.array:
            schema = {"type": "array", "items": schema}
    elif reply.media_type == "application/json":
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    return {reply.media_type: {"schema": schema}}


def _parameters(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


# The field of a creation's answer that fills a path parameter: an id, but a toxic's name.
_KEYS = {"toxic": "name"}


def _links(endpoint: Endpoint, model: type[BaseModel]) -> dict[str, Any]:
    """From a creation (a 201 answered with ``model``) to every operation on what it
    created: the path of those is the creation's path and one parameter more, which the new
    id (or name) fills."""
    links: dict[str, Any] = {}
    for target in ENDPOINTS:
        added = _parameters(target.path[len(endpoint.path) :])
        if not target.path.startswith(endpoint.path + "/{") or len(added) != 1:
            continue
        new = added[0]
        key = _KEYS.get(new, "id")
        if key not in model.model_fields:
            continue
        parameters = {name: f"$request.path.{name}" for name in _parameters(endpoint.path)}
        parameters[new] = f"$response.body#/{key}"
        links[target.operation_id] = {
            "operationId": target.operation_id,
            "parameters": parameters,
            "description": f"{target.summary}, with the id just created",
        }
    return links


def _operation(endpoint: Endpoint, auth: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for reply in endpoint.replies:
        response: dict[str, Any] = {"description": reply.description}
        if reply.status != 204:
            response["content"] = _content(reply)
        if reply.headers:
            response["headers"] = {h: _HEADERS[h] for h in reply.headers}
        if reply.status == 201 and reply.model is not None:
            links = _links(endpoint, reply.model)
            if links:
                response["links"] = links
        responses[str(reply.status)] = response
    problem = {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}}
    for status, causes in problems_of(endpoint, auth).items():
        response = {"description": causes, "content": problem}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": _HEADERS["WWW-Authenticate"]}
        responses[str(status)] = response
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "responses": responses,
    }
    names = _parameters(endpoint.path)
    if names:
        operation["parameters"] = [
            {"name": n, "in": "path", "required": True, "schema": _PARAMETERS[n]} for n in names
        ]
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": endpoint.body_required,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=endpoint.body.__name__)}}
            },
        }
    if not auth:
        return operation
    if endpoint.access == "public":
        # No token needed; /healthz shows more to the admin token, so one may be sent.
        operation["security"] = [{}, {"bearer": []}] if endpoint.path == "/healthz" else []
    elif endpoint.access == "admin":
        operation["description"] = "Needs the admin token (an app token gets 403)."
    elif endpoint.access == "metrics":
        operation["description"] = (
            "Needs the admin token or the metrics token (--metrics-token); an app token gets 403."
        )
    return operation


def build_spec(auth: bool = True, frontend_ips: Sequence[str] = ()) -> dict[str, Any]:
    """The document of a node that asks for tokens (``auth``) or of one that does not, and
    whose new routes may ask for ``frontend_ips`` (empty: any IP, as with a shared store)."""
    _, schemas = models_json_schema(
        [(model, "validation") for model in _models()], ref_template=_REF
    )
    if frontend_ips:
        # Any other IP is refused (422); the document of this node says which it serves.
        schemas["$defs"]["RouteBody"]["properties"]["frontend_ip"] = {
            "anyOf": [{"type": "string", "enum": list(frontend_ips)}, {"type": "null"}],
            "default": None,
            "description": "one of this node's --frontend-ip; default the first",
        }
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, auth)
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "restcp",
            "version": __version__,
            "description": _DESCRIPTION + (_AUTH_ON if auth else _AUTH_OFF),
        },
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }
    if auth:
        spec["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "the admin token (--api-token) or a token of one app",
            }
        }
        spec["security"] = [{"bearer": []}]
    return spec
