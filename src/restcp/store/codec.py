"""Route and backend settings, and toxics, as JSON objects, shared by every store.

Loading is forgiving in one way only: keys this version does not know are dropped, so a
store written by a newer restcp still loads. Missing keys take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from restcp.core.toxics import SPECS
from restcp.model import Backend, BackendTls, HealthCheck, RouteSettings, TlsSettings, Toxic

_ROUTE_FIELDS = {f.name for f in dataclasses.fields(RouteSettings)}
_CHECK_FIELDS = {f.name for f in dataclasses.fields(HealthCheck)}
_TLS_FIELDS = {f.name for f in dataclasses.fields(TlsSettings)}
_BACKEND_TLS_FIELDS = {f.name for f in dataclasses.fields(BackendTls)}
# A backend's address and id live in their own columns/keys; the rest is its settings.
_BACKEND_SETTINGS = {f.name for f in dataclasses.fields(Backend)} - {"id", "ip", "port"}
# A toxic's name is its key (a column, a hash field); the rest is its settings.
_TOXIC_SETTINGS = {f.name for f in dataclasses.fields(Toxic)} - {"name"}


def dump_route_settings(settings: RouteSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def load_route_settings(text: str) -> RouteSettings:
    data: dict[str, Any] = {k: v for k, v in json.loads(text).items() if k in _ROUTE_FIELDS}
    check = data.get("health_check")
    if isinstance(check, dict):
        data["health_check"] = HealthCheck(**{k: v for k, v in check.items() if k in _CHECK_FIELDS})
    if isinstance(data.get("sni"), list):
        data["sni"] = tuple(data["sni"])
    tls = data.get("tls")
    if isinstance(tls, dict):
        fields = {k: v for k, v in tls.items() if k in _TLS_FIELDS}
        fields["certificates"] = tuple(fields.get("certificates", ()))
        fields["alpn"] = tuple(fields.get("alpn", ()))
        data["tls"] = TlsSettings(**fields)
    backend_tls = data.get("backend_tls")
    if isinstance(backend_tls, dict):
        data["backend_tls"] = BackendTls(
            **{k: v for k, v in backend_tls.items() if k in _BACKEND_TLS_FIELDS}
        )
    return RouteSettings(**data)


def dump_backend_settings(backend: Backend) -> str:
    return json.dumps({name: getattr(backend, name) for name in sorted(_BACKEND_SETTINGS)})


def load_backend(backend_id: int, ip: str, port: int, settings: str) -> Backend:
    data = {k: v for k, v in json.loads(settings).items() if k in _BACKEND_SETTINGS}
    return Backend(backend_id, ip, port, **data)


def dump_toxic(toxic: Toxic) -> str:
    """A toxic without its name: attributes as an object, clients as a list."""
    return json.dumps(
        {
            "type": toxic.type,
            "stream": toxic.stream,
            "toxicity": toxic.toxicity,
            "attributes": dict(toxic.attributes),
            "clients": list(toxic.clients),
        },
        sort_keys=True,
    )


def load_toxic(name: str, text: str) -> Toxic:
    data = {k: v for k, v in json.loads(text).items() if k in _TOXIC_SETTINGS}
    stored: dict[str, int] = data.pop("attributes", {})
    # The attributes this version knows of the type, stored or (written before one was
    # added) their defaults.
    spec = SPECS.get(data["type"], {})
    values: dict[str, int] = {}
    for key, attribute in spec.items():
        value = stored.get(key, attribute.default)
        if value is not None:
            values[key] = value
    return Toxic(
        name,
        attributes=tuple(sorted(values.items())),
        clients=tuple(data.pop("clients", ())),
        **data,
    )
