"""Request bodies, validated strictly: a port is a JSON integer, not "80", 80.0 or true.

Unknown fields are refused rather than ignored, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from restcp.model import Balance

Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
Seconds = Annotated[float, Field(strict=True, ge=0, le=86400 * 365, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, le=3600, allow_inf_nan=False)]


def canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address literal") from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendBody(_Body):
    """``{"ip": "127.0.0.1", "port": 9999}``: attach (PUT/POST) or replace (POST/PUT on an id)."""

    ip: StrictStr
    port: Port

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return canonical_ip(value)


class RouteSettingsBody(_Body):
    """The settable fields of a route; omitted ones keep their current (or default) value."""

    balance: Balance | None = None
    connect_timeout: PositiveSeconds | None = None
    idle_timeout: Seconds | None = None


class RouteBody(RouteSettingsBody):
    """Route creation: all optional; an empty body is the seed's ``curl -XPUT``."""

    port: Port | None = None
    frontend_ip: StrictStr | None = None

    @field_validator("frontend_ip")
    @classmethod
    def _frontend_ip(cls, value: str | None) -> str | None:
        return None if value is None else canonical_ip(value)
