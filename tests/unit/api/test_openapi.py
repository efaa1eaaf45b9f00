"""The OpenAPI document against the code it describes, without a server: the routes build_app
registers, the JSON the handlers write, and JSON Schema itself."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest
import schemathesis

from restcp.api.app import Api, backend_json, build_app, problem, route_json, toxic_json
from restcp.api.endpoints import ENDPOINTS, problems_of
from restcp.api.openapi import build_spec
from restcp.api.schemas import BackendOut, HealthOut, Problem, RouteOut, ToxicOut
from restcp.model import Backend, BackendStatus, HealthCheck, Route, RouteSettings, Toxic

SPEC = build_spec()


class FakeOwner:
    """Enough of an Owner to build the app; nothing here is called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the owner's {name} is not needed to build the app")


def registered() -> set[tuple[str, str]]:
    app = build_app(store=FakeOwner(), owner=FakeOwner())  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        assert path is not None
        routes.add((route.method, path))
    return routes


def test_the_document_lists_exactly_the_registered_routes() -> None:
    documented = {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}
    # HEAD comes with every GET, as HTTP has it; the document leaves it implied.
    assert registered() == documented | {("HEAD", p) for m, p in documented if m == "GET"}


def test_every_handler_of_the_table_is_a_method_of_api_and_every_handler_is_listed() -> None:
    handlers = {
        name
        for name, member in inspect.getmembers(Api, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert {e.handler for e in ENDPOINTS} == handlers


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for ops in SPEC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_schema_is_valid_json_schema_2020_12() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for name, schema in SPEC["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as err:
            raise AssertionError(f"{name}: {err}") from None


def resolver(instance_schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of ``instance_schema`` that resolves the document's $refs."""
    document = {**instance_schema, "components": SPEC["components"]}
    return jsonschema.Draft202012Validator(document)


def validate(model: type, value: Any, array: bool = False) -> None:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    resolver({"type": "array", "items": ref} if array else ref).validate(value)


FULL_ROUTE = Route(
    app="web",
    id=7,
    frontend_ip="::1",
    port=10000,
    settings=RouteSettings(
        balance="least_conn",
        health_check=HealthCheck(send="PING\r\n", expect="+PONG"),
        max_connections=5,
        proxy_protocol="v2",
        enabled=False,
        seed=42,
    ),
    backends=(
        Backend(1, "10.0.0.1", 80, weight=3, state="drain", drain_timeout=1.5),
        Backend(2, "::2", 81, max_connections=4, proxy_protocol="none"),
    ),
    toxics=(
        Toxic("slow", "latency", attributes=(("jitter", 5), ("latency", 200))),
        Toxic("cut", "reset_peer", "upstream", 0.5, (("timeout", 0),), ("10.0.0.0/8",)),
    ),
)
STATUSES = {1: BackendStatus("up", 1764181343.5, "2 check(s) passed", 3)}


@pytest.mark.parametrize("route", [FULL_ROUTE, Route("a", 1, "127.0.0.1", 1)], ids=["full", "bare"])
def test_route_and_backend_json_are_exactly_their_models(route: Route) -> None:
    body = route_json(route, STATUSES)
    validate(RouteOut, body)
    # Required and additionalProperties: false, both ways: no field missing or extra.
    assert set(body) == set(RouteOut.model_fields)
    RouteOut.model_validate(body)
    for backend in route.backends:
        one = backend_json(backend, STATUSES.get(backend.id))
        validate(BackendOut, one)
        assert set(one) == set(BackendOut.model_fields)
    assert [t["name"] for t in body["toxics"]] == [t.name for t in route.toxics]
    for toxic in route.toxics:
        one = toxic_json(toxic)
        validate(ToxicOut, one)
        assert set(one) == set(ToxicOut.model_fields)


def test_problems_are_problem_documents() -> None:
    response = problem(422, "bad", errors=[{"field": "port", "message": "too big"}])
    assert response.text is not None
    validate(Problem, json.loads(response.text))
    assert response.content_type == "application/problem+json"
    with pytest.raises(jsonschema.ValidationError):
        validate(Problem, {"type": "about:blank", "title": "x", "status": 1, "detail": "d", "x": 1})


def test_health_model_refuses_what_healthz_must_not_send() -> None:
    validate(HealthOut, {"status": "ok", "routes": 0})
    validate(HealthOut, {"status": "starting", "routes": 1, "unbound": [
        {"app": "a", "route": 1, "error": "in use"}]})  # fmt: skip
    for bad in ({"status": "ok"}, {"status": "fine", "routes": 0}, {"status": "ok", "routes": 0,
                "secret": 1}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            validate(HealthOut, bad)


def test_derived_problems() -> None:
    by_key = {(e.method, e.path): e for e in ENDPOINTS}
    healthz = problems_of(by_key[("GET", "/healthz")])
    assert healthz == {}
    create = problems_of(by_key[("PUT", "/apps/{app}/routes")])
    assert set(create) == {400, 401, 403, 404, 409, 413, 422, 503}
    tokens = problems_of(by_key[("POST", "/apps/{app}/tokens")])
    # Admin only: an app token is refused (403) before the app is looked at, never a 404.
    assert 404 not in tokens
    assert "admin token only" in tokens[403]
    delete = problems_of(by_key[("DELETE", "/apps/{app}/tokens/{token}")])
    assert delete[404] == "an unknown token"


def test_401_documents_the_challenge_and_201_the_location() -> None:
    for ops in SPEC["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                if status == "401":
                    assert "WWW-Authenticate" in response["headers"]
                if status == "201":
                    assert response["headers"]["Location"]["required"] is True


def test_public_endpoints_need_no_token_and_others_do() -> None:
    assert SPEC["security"] == [{"bearer": []}]
    public = {p for p, ops in SPEC["paths"].items() for op in ops.values() if "security" in op}
    assert public == {"/healthz", "/openapi.json", "/", "/ui/", "/ui/{asset}"}


def test_request_bodies_are_the_models_that_validate_them() -> None:
    op = SPEC["paths"]["/apps/{app}/routes/{route}/backends"]["put"]
    assert op["requestBody"]["required"] is True
    schema = SPEC["components"]["schemas"]["BackendBody"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"ip", "port"}
    assert schema["properties"]["port"] == {
        "maximum": 65535, "minimum": 1, "title": "Port", "type": "integer"
    }  # fmt: skip
    # Read-only fields are marked so in responses.
    backend = SPEC["components"]["schemas"]["BackendOut"]["properties"]
    assert {n for n, p in backend.items() if p.get("readOnly")} == {
        "id", "health", "health_changed_at", "health_reason", "active_connections", "replaced",
        "last_check",
    }  # fmt: skip


def test_without_tokens_nothing_needs_a_token_or_answers_401() -> None:
    """A node started without --api-token serves the document of what it does: no
    operation has a security requirement, none answers 401."""
    spec = build_spec(auth=False)
    assert "security" not in spec
    assert "securitySchemes" not in spec["components"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "security" not in op, (method, path)
            assert "401" not in op["responses"], (method, path)
            assert "token" not in op.get("description", ""), (method, path)
    # The same operations and everything else as with tokens.
    with_tokens = build_spec(auth=True)
    assert {(p, m) for p, ops in spec["paths"].items() for m in ops} == {
        (p, m) for p, ops in with_tokens["paths"].items() for m in ops
    }
    assert spec["components"]["schemas"] == with_tokens["components"]["schemas"]


def test_a_nodes_frontend_ips_are_the_ones_a_route_may_ask_for() -> None:
    served = build_spec(frontend_ips=("127.0.0.1", "::1"))["components"]["schemas"]
    field = served["RouteBody"]["properties"]["frontend_ip"]
    assert field["anyOf"][0]["enum"] == ["127.0.0.1", "::1"]
    # With a shared store other nodes' IPs may be asked for: any IP.
    field = SPEC["components"]["schemas"]["RouteBody"]["properties"]["frontend_ip"]
    assert "enum" not in json.dumps(field)


def test_an_app_id_is_never_a_dot_segment() -> None:
    for ops in SPEC["paths"].values():
        for op in ops.values():
            for parameter in op.get("parameters", []):
                if parameter["name"] == "app":
                    schema = parameter["schema"]
                    assert schema["not"] == {"enum": [".", ".."]}
                    check = jsonschema.Draft202012Validator(schema)
                    assert check.is_valid("a.b")
                    assert check.is_valid("...")
                    assert not check.is_valid("..")
                    assert not check.is_valid(".")


CREATIONS = {
    "create_route": ("route", {"get_route", "patch_route", "delete_route", "list_backends",
                               "add_backend", "add_backend_post", "list_toxics", "create_toxic",
                               "create_toxic_post", "route_stats_history"}),
    "add_backend": ("backend", {"get_backend", "replace_backend", "replace_backend_put",
                                "patch_backend", "delete_backend"}),
    "create_toxic": ("toxic", {"get_toxic", "patch_toxic", "delete_toxic"}),
    "create_token": ("token", {"delete_token"}),
}  # fmt: skip


def test_each_creation_links_to_the_operations_on_what_it_created() -> None:
    """A new route's id fills {route} of the operations on it, a new backend's {backend}, a
    new toxic's name {toxic}: OpenAPI links, which stateful testers and client generators
    follow."""
    for endpoint in ENDPOINTS:
        op = SPEC["paths"][endpoint.path][endpoint.method.lower()]
        links = op["responses"].get("201", {}).get("links", {})
        if endpoint.handler not in CREATIONS:
            assert not links, endpoint
            continue
        new, targets = CREATIONS[endpoint.handler]
        assert set(links) == targets, endpoint
        by_id = {e.operation_id: e for e in ENDPOINTS}
        for name, link in links.items():
            target = by_id[link["operationId"]]
            key = "name" if new == "toxic" else "id"
            assert link["parameters"][new] == f"$response.body#/{key}"
            assert set(link["parameters"]) == {
                p["name"] for p in SPEC["paths"][target.path][target.method.lower()]["parameters"]
            }, name
            for other in set(link["parameters"]) - {new}:
                assert link["parameters"][other] == f"$request.path.{other}"


def test_schemathesis_reaches_every_operation_on_a_backend_through_the_links() -> None:
    schema = schemathesis.openapi.from_dict(build_spec(auth=False))
    reached = schema.operations_with_incoming_links()
    for method in ("GET", "PUT", "POST", "PATCH", "DELETE"):
        assert f"{method} /apps/{{app}}/routes/{{route}}/backends/{{backend}}" in reached
    # A new route's toxics too, and every operation on a new toxic.
    for method in ("GET", "PUT", "POST"):
        assert f"{method} /apps/{{app}}/routes/{{route}}/toxics" in reached
    for method in ("GET", "PATCH", "DELETE"):
        assert f"{method} /apps/{{app}}/routes/{{route}}/toxics/{{toxic}}" in reached
