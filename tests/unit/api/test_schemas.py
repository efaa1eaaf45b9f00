from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from restcp.api.schemas import (
    BackendBody,
    BackendPatchBody,
    HealthCheckBody,
    RouteBody,
    RouteSettingsBody,
)

# 80.0 is no bad port: JSON Schema counts it as an integer (test_integral_numbers_...).
BAD_PORTS = ["80", 80.5, 0.0, 65536.0, True, None, 0, -1, 65536, [80], {"port": 80}]
BAD_IPS = ["-localhost", "example.123", "", "127.0.0.1:80", "[::1]", "127.1", 2130706433, None]
NAMES = ["localhost", "example.com", "db-1.internal", "a.b.c."]


def test_backend_body() -> None:
    body = BackendBody.model_validate({"ip": "127.0.0.1", "port": 9999})
    assert (body.ip, body.port) == ("127.0.0.1", 9999)
    assert BackendBody.model_validate({"ip": "::1", "port": 1}).port == 1
    assert BackendBody.model_validate({"ip": "::1", "port": 65535}).port == 65535


@pytest.mark.parametrize("port", BAD_PORTS)
def test_backend_port_must_be_an_integer_in_range(port: Any) -> None:
    with pytest.raises(ValidationError) as err:
        BackendBody.model_validate({"ip": "127.0.0.1", "port": port})
    assert [e["loc"] for e in err.value.errors()] == [("port",)]


@pytest.mark.parametrize("port", [p for p in BAD_PORTS if p is not None])
def test_route_port_must_be_an_integer_in_range(port: Any) -> None:
    with pytest.raises(ValidationError):
        RouteBody.model_validate({"port": port})


@pytest.mark.parametrize(
    ("ip", "canonical"),
    [
        ("::0001", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_ips_are_canonicalised(ip: str, canonical: str) -> None:
    assert BackendBody.model_validate({"ip": ip, "port": 80}).ip == canonical
    assert RouteBody.model_validate({"frontend_ip": ip}).frontend_ip == canonical


@pytest.mark.parametrize("ip", BAD_IPS)
def test_ip_must_be_an_ip_literal_or_a_host_name(ip: Any) -> None:
    with pytest.raises(ValidationError) as err:
        BackendBody.model_validate({"ip": ip, "port": 80})
    assert [e["loc"] for e in err.value.errors()] == [("ip",)]


@pytest.mark.parametrize("name", NAMES)
def test_a_backend_may_be_a_host_name_in_lower_case(name: str) -> None:
    assert BackendBody.model_validate({"ip": name.upper(), "port": 80}).ip == name


@pytest.mark.parametrize("ip", [ip for ip in BAD_IPS + NAMES if ip is not None])
def test_frontend_ip_must_be_an_ip_literal(ip: Any) -> None:
    with pytest.raises(ValidationError):
        RouteBody.model_validate({"frontend_ip": ip})


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (BackendBody, {"ip": "127.0.0.1", "port": 80, "wieght": 1}),
        (BackendPatchBody, {"id": 2}),
        (HealthCheckBody, {"intervall": 2}),
        (RouteBody, {"prot": 80}),
        (RouteBody, {"balance": "random", "backends": []}),
        (RouteSettingsBody, {"port": 80}),  # a route's address cannot be changed
        (RouteSettingsBody, {"frontend_ip": "127.0.0.1"}),
    ],
)
def test_unknown_fields_are_rejected(model: Any, data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(data)


def test_empty_route_body_is_valid() -> None:
    body = RouteBody.model_validate({})
    assert body.given() == {}
    assert (body.port, body.frontend_ip) == (None, None)
    # For the address, null means "not given": the node picks the port and the frontend.
    assert RouteBody.model_validate({"port": None, "frontend_ip": None}).port is None


def test_given_tells_null_from_omitted() -> None:
    assert RouteSettingsBody.model_validate({"health_check": None}).given() == {
        "health_check": None
    }
    assert RouteSettingsBody.model_validate({"max_connections": 5}).given() == {
        "max_connections": 5
    }
    with pytest.raises(ValidationError):
        RouteSettingsBody.model_validate({"balance": None})


@pytest.mark.parametrize(
    "check",
    [
        {"interval": 0},
        {"rise": 0},
        {"fall": 101},
        {"expect": "re:("},
        {"send": "\u20ac"},
        {"initial": "maybe"},
        {"timeout": "1"},
    ],
)
def test_bad_health_checks_are_rejected(check: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RouteSettingsBody.model_validate({"health_check": check})


@pytest.mark.parametrize(
    "data",
    [{"weight": 257}, {"weight": -1}, {"state": "off"}, {"proxy_protocol": "v3"},
     {"max_connections": 0}, {"drain_timeout": -1}, {"weight": 1.5}, {"weight": "1"}],
)  # fmt: skip
def test_bad_backend_settings_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BackendBody.model_validate({"ip": "127.0.0.1", "port": 80, **data})


def test_route_settings() -> None:
    body = RouteBody.model_validate(
        {"port": 10001, "balance": "round_robin", "connect_timeout": 2.5, "idle_timeout": 0}
    )
    assert (body.port, body.balance, body.connect_timeout, body.idle_timeout) == (
        10001,
        "round_robin",
        2.5,
        0,
    )


@pytest.mark.parametrize(
    "data",
    [
        {"balance": "fastest"},
        {"balance": ""},
        {"connect_timeout": 0},
        {"connect_timeout": -1},
        {"connect_timeout": 3601},
        {"idle_timeout": -1},
        {"idle_timeout": float("inf")},
        {"idle_timeout": float("nan")},
    ],
)
def test_bad_settings_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RouteSettingsBody.model_validate(data)


@pytest.mark.parametrize("value", [True, "5"])
def test_timeouts_are_strict_numbers(value: Any) -> None:
    with pytest.raises(ValidationError):
        RouteSettingsBody.model_validate({"idle_timeout": value})


BODIES = [BackendBody, BackendPatchBody, RouteBody, RouteSettingsBody, HealthCheckBody]


def integer_fields() -> list[tuple[Any, str, int]]:
    """(model, field, its least valid value) for every field the JSON Schema of a request
    body calls an integer."""
    found = []
    for model in BODIES:
        for name, schema in model.model_json_schema()["properties"].items():
            kinds = schema.get("anyOf", [schema])
            integer = next((k for k in kinds if k.get("type") == "integer"), None)
            if integer is not None:
                found.append((model, name, integer.get("minimum", 0)))
    return found


def body_with(model: Any, name: str, value: Any) -> dict[str, Any]:
    required = {"ip": "127.0.0.1", "port": 80} if model is BackendBody else {}
    return {**required, name: value}


INTEGER_FIELDS = integer_fields()
# The walk above finds them all (a model's JSON Schema may nest an integer in anyOf).
assert {
    ("BackendBody", "port"),
    ("BackendBody", "weight"),
    ("RouteBody", "port"),
    ("RouteSettingsBody", "passive_fall"),
    ("HealthCheckBody", "rise"),
} <= {(m.__name__, n) for m, n, _ in INTEGER_FIELDS}


@pytest.mark.parametrize(
    ("model", "name", "least"), INTEGER_FIELDS, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_integral_numbers_are_integers_on_every_integer_field(
    model: Any, name: str, least: int
) -> None:
    """JSON Schema calls 78.0 an integer, and so does the API, on every integer field; a
    fraction, a string or a boolean is still refused."""
    value = least + 1
    given = model.model_validate(body_with(model, name, float(value)))
    assert getattr(given, name) == value
    assert type(getattr(given, name)) is int
    for bad in (value + 0.5, str(value), True):
        with pytest.raises(ValidationError):
            model.model_validate(body_with(model, name, bad))
