"""Request bodies, validated strictly: a port is a JSON integer, not "80", 80.0 or true.

Unknown fields are refused rather than ignored, so a typo is an error, not a silent default.
Which fields a request *gave* matters (``model_fields_set``): an omitted field keeps its
current value, while ``null`` is a value where a field allows it (``"health_check": null``
turns checks off, ``"max_connections": null`` removes the limit).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from restcp.model import (
    AdminState,
    BackendProxyProtocol,
    Balance,
    Health,
    ProxyProtocol,
    WhenAllDown,
)

Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
Seconds = Annotated[float, Field(strict=True, ge=0, le=86400 * 365, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, le=3600, allow_inf_nan=False)]
Weight = Annotated[int, Field(strict=True, ge=0, le=256)]
Limit = Annotated[int, Field(strict=True, ge=1, le=10_000_000)]
Count = Annotated[int, Field(strict=True, ge=1, le=100)]
ProbeText = Annotated[str, Field(strict=True, max_length=1024)]


def canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address literal") from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The fields the request named, with their values (``null`` included)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class HealthCheckBody(_Body):
    """An active check; ``{}`` is a TCP connect check with HAProxy's defaults."""

    interval: PositiveSeconds = 2.0
    timeout: PositiveSeconds = 1.0
    rise: Count = 2
    fall: Count = 3
    send: ProbeText | None = None
    expect: ProbeText | None = None
    initial: Health = "unknown"

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("re:"):
            try:
                re.compile(value[3:].encode("latin-1"))
            except (re.error, UnicodeEncodeError) as err:
                raise ValueError(f"invalid regular expression: {err}") from None
        return value

    @field_validator("send", "expect")
    @classmethod
    def _latin1(cls, value: str | None) -> str | None:
        # Probes are bytes on the wire: each character stands for one byte (0-255).
        if value is not None:
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("use characters U+0000-U+00FF only (one byte each)") from None
        return value


class BackendBody(_Body):
    """Attach (PUT/POST on the collection) or replace (POST/PUT on an id): ip and port are
    required, the rest take their defaults when omitted."""

    ip: StrictStr
    port: Port
    weight: Weight = 1
    state: AdminState = "enabled"
    drain_timeout: Seconds | None = None
    max_connections: Limit | None = None
    proxy_protocol: BackendProxyProtocol | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return canonical_ip(value)


class BackendPatchBody(_Body):
    """PATCH of a backend: only the fields given change."""

    ip: StrictStr = ""
    port: Port = 1
    weight: Weight = 1
    state: AdminState = "enabled"
    drain_timeout: Seconds | None = None
    max_connections: Limit | None = None
    proxy_protocol: BackendProxyProtocol | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return canonical_ip(value)


class RouteSettingsBody(_Body):
    """The settable fields of a route (PATCH); omitted ones keep their current value."""

    balance: Balance = "random"
    connect_timeout: PositiveSeconds = 5.0
    idle_timeout: Seconds = 3600.0
    health_check: HealthCheckBody | None = None
    when_all_down: WhenAllDown = "fail_fast"
    max_connections: Limit | None = None
    half_close_timeout: Seconds = 60.0
    max_connect_attempts: Count = 3
    proxy_protocol: ProxyProtocol | None = None
    passive_fall: Annotated[int, Field(strict=True, ge=0, le=100)] = 3
    passive_cooldown: PositiveSeconds = 10.0


class RouteBody(RouteSettingsBody):
    """Route creation: all optional; an empty body is the seed's ``curl -XPUT``."""

    port: Port | None = None
    frontend_ip: StrictStr | None = None

    @field_validator("frontend_ip")
    @classmethod
    def _frontend_ip(cls, value: str | None) -> str | None:
        return None if value is None else canonical_ip(value)
