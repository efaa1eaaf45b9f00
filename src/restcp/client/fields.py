"""The keyword arguments the client's methods take, typed for editors and type checkers.

They name the fields of the API's request bodies (api/schemas.py), which validate them on
the server; tests/unit/client/test_fields.py keeps each in step with its body model.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from restcp.model import (
    AdminState,
    BackendProxyProtocol,
    Balance,
    Health,
    ProxyProtocol,
    WhenAllDown,
)


class HealthCheckFields(TypedDict, total=False):
    """An active check (HealthCheckBody); ``{}`` is a TCP connect check."""

    interval: float
    timeout: float
    rise: int
    fall: int
    send: str | None
    expect: str | None
    initial: Health


class TlsFields(TypedDict, total=False):
    """TLS termination (TlsBody, docs/tls.md): ``certificates`` by name is required."""

    certificates: list[str]
    min_version: Literal["1.2", "1.3"]
    alpn: list[str]
    client_ca: str | None
    handshake_timeout: float


class BackendTlsFields(TypedDict, total=False):
    """TLS towards the backends (BackendTlsBody, docs/tls.md): ``{}`` verifies them against
    the system's CA store."""

    verify: bool
    ca: str | None
    server_name: str | None
    certificate: str | None


class RouteFields(TypedDict, total=False):
    """A route's settings (RouteSettingsBody): those given change, the others keep theirs."""

    balance: Balance
    connect_timeout: float
    idle_timeout: float
    health_check: HealthCheckFields | dict[str, Any] | None
    when_all_down: WhenAllDown
    max_connections: int | None
    half_close_timeout: float
    max_connect_attempts: int
    proxy_protocol: ProxyProtocol | None
    passive_fall: int
    passive_cooldown: float
    splice: bool | Literal["auto"]
    enabled: bool
    seed: int | None
    name: str | None
    sni: list[str] | None
    tls: TlsFields | dict[str, Any] | None
    backend_tls: BackendTlsFields | dict[str, Any] | None


class BackendFields(TypedDict, total=False):
    """A backend's settings besides its address (BackendBody)."""

    weight: int
    state: AdminState
    drain_timeout: float | None
    max_connections: int | None
    proxy_protocol: BackendProxyProtocol | None


class BackendChanges(BackendFields, total=False):
    """A PATCH of a backend (BackendPatchBody): its address may change too."""

    ip: str
    port: int
