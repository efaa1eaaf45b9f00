"""Route and backend settings as JSON objects, shared by every store.

Loading is forgiving in one way only: keys this version does not know are dropped, so a
store written by a newer restcp still loads. Missing keys take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from restcp.model import Backend, HealthCheck, RouteSettings

_ROUTE_FIELDS = {f.name for f in dataclasses.fields(RouteSettings)}
_CHECK_FIELDS = {f.name for f in dataclasses.fields(HealthCheck)}
# A backend's address and id live in their own columns/keys; the rest is its settings.
_BACKEND_SETTINGS = {f.name for f in dataclasses.fields(Backend)} - {"id", "ip", "port"}


def dump_route_settings(settings: RouteSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def load_route_settings(text: str) -> RouteSettings:
    data: dict[str, Any] = {k: v for k, v in json.loads(text).items() if k in _ROUTE_FIELDS}
    check = data.get("health_check")
    if isinstance(check, dict):
        data["health_check"] = HealthCheck(**{k: v for k, v in check.items() if k in _CHECK_FIELDS})
    return RouteSettings(**data)


def dump_backend_settings(backend: Backend) -> str:
    return json.dumps({name: getattr(backend, name) for name in sorted(_BACKEND_SETTINGS)})


def load_backend(backend_id: int, ip: str, port: int, settings: str) -> Backend:
    data = {k: v for k, v in json.loads(settings).items() if k in _BACKEND_SETTINGS}
    return Backend(backend_id, ip, port, **data)
