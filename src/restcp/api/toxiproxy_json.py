"""toxiproxy's JSON, sans-IO: what its API's bodies mean in restcp's terms, and restcp's
routes and toxics in its shapes (docs/toxiproxy.md).

A toxiproxy *proxy* is a route of one app that has a ``name`` (RouteSettings.name): its
``listen`` is the route's frontend address, its ``upstream`` the address of its (first)
backend, its ``enabled`` the route's. A toxiproxy *toxic* is a restcp toxic, shown without
``clients``. The shapes and the errors' words are toxiproxy's (its api.go,
toxic_collection.go, proxy_collection.go): an error is ``{"error": ..., "status": ...}``.

Bodies are read as toxiproxy's Go decoder reads them: unknown fields are ignored, a field of
the wrong JSON type is a "bad request body", an attribute omitted takes restcp's default
(toxiproxy's Go zero, 0, where restcp has none). What restcp refuses that toxiproxy takes (an
attribute out of its range, a toxicity outside 0-1, a listen host that is not a frontend IP)
is a 400 naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from restcp.core import toxics
from restcp.model import (
    Route,
    Stream,
    Toxic,
    ToxicType,
    canonical_host,
    format_host,
    is_host_name,
)
from restcp.settings import parse_host_port

# toxiproxy's error messages (api.go), each with its status.
BAD_BODY: Final = "bad request body"
MISSING_FIELD: Final = "missing required field"
PROXY_NOT_FOUND: Final = "proxy not found"
PROXY_EXISTS: Final = "proxy already exists"
INVALID_STREAM: Final = "stream was invalid, can be either upstream or downstream"
INVALID_TYPE: Final = "invalid toxic type"
TOXIC_EXISTS: Final = "toxic already exists"
TOXIC_NOT_FOUND: Final = "toxic not found"

# A listen host that means "every address" (Go's net.Listen takes "" for it too).
WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


class ToxiproxyError(Exception):
    """An answer in toxiproxy's error shape: ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_body(reason: str) -> ToxiproxyError:
    return ToxiproxyError(400, f"{BAD_BODY}: {reason}")


def decode(raw: bytes) -> Any:
    """A request body as JSON; an empty one is an error, as Go's decoder has it (EOF)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_body(str(err) if raw.strip() else "EOF") from None
    except RecursionError:
        raise bad_body("nested too deeply") from None


# -- proxies ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    """A ``listen`` as given: its host (an IP literal in canonical form, ``localhost``, or a
    wildcard) and port (0: any)."""

    host: str
    port: int

    def ip(self, frontend_ips: tuple[str, ...]) -> str:
        """The frontend IP it names among the node's: a wildcard that is not one of them is
        the first, ``localhost`` is the loopback address served."""
        if self.host in frontend_ips:
            return self.host
        if self.host in WILDCARDS:
            return frontend_ips[0]
        if self.host == "localhost":
            return next((ip for ip in ("127.0.0.1", "::1") if ip in frontend_ips), "127.0.0.1")
        return self.host

    def matches(self, route: Route, frontend_ips: tuple[str, ...]) -> bool:
        """Whether ``route`` listens where this asks (port 0 matches any port)."""
        return self.ip(frontend_ips) == route.frontend_ip and self.port in (0, route.port)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{format_host(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A proxy as a body asks for it."""

    name: str
    listen: Listen
    upstream: Upstream
    enabled: bool


def parse_listen(text: str) -> Listen:
    if text in WILDCARDS:
        return Listen(text, 0)
    try:
        host, port = parse_host_port(text)
    except ValueError as err:
        raise bad_body(f"listen: {err}") from None
    if host.lower() == "localhost":
        return Listen("localhost", port)
    try:
        ip = canonical_host(host)
    except ValueError:
        ip = ""
    if not ip or is_host_name(ip):
        raise bad_body(f"listen: {host!r} is not an IP address, localhost or empty")
    return Listen(ip, port)


def parse_upstream(text: str) -> Upstream:
    try:
        host, port = parse_host_port(text)
        if port == 0:
            raise ValueError("port 0 is no address to connect to")
        return Upstream(canonical_host(host), port)
    except ValueError as err:
        raise bad_body(f"upstream: {err}") from None


def _field(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind):
        raise bad_body(f"{key} must be a JSON {'string' if kind is str else 'boolean'}")
    return value


def proxy_spec(data: Any, where: str = "") -> ProxySpec:
    """A new proxy (POST /proxies, one of /populate's): ``name`` and ``upstream`` required,
    ``listen`` by default any port of the first frontend IP, ``enabled`` by default true."""
    if not isinstance(data, dict):
        raise bad_body("a proxy must be a JSON object")
    name = _field(data, "name", str, "")
    upstream = _field(data, "upstream", str, "")
    listen = _field(data, "listen", str, "")
    # null is "not given" (populate's nullable enabled).
    enabled = _field(data, "enabled", bool, None)
    if not name:
        raise ToxiproxyError(400, f"{MISSING_FIELD}: name{where}")
    if not upstream:
        raise ToxiproxyError(400, f"{MISSING_FIELD}: upstream{where}")
    return ProxySpec(
        name, parse_listen(listen), parse_upstream(upstream), True if enabled is None else enabled
    )


def proxy_change(data: Any, route: Route) -> tuple[Listen | None, Upstream | None, bool]:
    """An update of a proxy (POST or PATCH /proxies/{name}): what it gives of listen and
    upstream (None: as they are) and the enabled it ends with."""
    if not isinstance(data, dict):
        raise bad_body("a proxy must be a JSON object")
    listen = _field(data, "listen", str, None)
    upstream = _field(data, "upstream", str, None)
    enabled = _field(data, "enabled", bool, route.settings.enabled)
    return (
        None if listen is None else parse_listen(listen),
        None if upstream is None else parse_upstream(upstream),
        enabled,
    )


def populate_specs(data: Any) -> list[ProxySpec]:
    """/populate's body (and a -config file): an array of proxies, each checked before any
    is created. A name twice: the last one wins, as in toxiproxy."""
    if not isinstance(data, list):
        raise bad_body("populate takes a JSON array of proxies")
    return [proxy_spec(item, f" at proxy {i}") for i, item in enumerate(data, 1)]


def upstream_of(route: Route) -> str:
    """The route's first backend as toxiproxy's ``upstream`` (empty: it has none)."""
    if not route.backends:
        return ""
    backend = route.backends[0]
    return str(Upstream(backend.ip, backend.port))


def proxy_json(route: Route) -> dict[str, Any]:
    return {
        "name": route.settings.name,
        "listen": f"{format_host(route.frontend_ip)}:{route.port}",
        "upstream": upstream_of(route),
        "enabled": route.settings.enabled,
        "toxics": toxics_json(route),
    }


# -- toxics ----------------------------------------------------------------------------


def toxic_json(toxic: Toxic) -> dict[str, Any]:
    return {
        "attributes": dict(toxic.attributes),
        "name": toxic.name,
        "type": toxic.type,
        "stream": toxic.stream,
        "toxicity": toxic.toxicity,
    }


def toxics_json(route: Route) -> list[dict[str, Any]]:
    """In toxiproxy's order: the upstream chain, then the downstream one, each as added."""
    return [toxic_json(t) for stream in toxics.STREAMS for t in route.toxics if t.stream == stream]


def _attributes(type_: str, data: dict[str, Any], current: dict[str, int] | None) -> Any:
    given = data.get("attributes")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad_body("attributes must be a JSON object")
    spec = toxics.SPECS[type_]  # type: ignore[index]
    # toxiproxy's decoder ignores what its toxic has no field for.
    known = {k: v for k, v in given.items() if k in spec}
    if current is None:
        # An attribute restcp requires is Go's zero when omitted, as toxiproxy has it.
        for key, attribute in spec.items():
            if attribute.default is None and key not in known:
                known[key] = 0
    try:
        return toxics.attributes(type_, known, current)
    except toxics.ToxicError as err:
        raise bad_body(str(err)) from None


def _toxicity(data: dict[str, Any], default: float) -> float:
    try:
        return toxics.check_toxicity(data.get("toxicity", default))
    except toxics.ToxicError as err:
        raise bad_body(str(err)) from None


def new_toxic(data: Any) -> Toxic:
    """A toxic as POST /proxies/{name}/toxics asks for it, checked in toxiproxy's order
    (stream, type; the name's uniqueness is the caller's), then as restcp checks it."""
    if not isinstance(data, dict):
        raise bad_body("a toxic must be a JSON object")
    name = _field(data, "name", str, "")
    type_ = _field(data, "type", str, "")
    # Any case, as toxiproxy parses it.
    stream = _field(data, "stream", str, "downstream").lower()
    if stream not in toxics.STREAMS:
        raise ToxiproxyError(400, INVALID_STREAM)
    if type_ not in toxics.SPECS:
        raise ToxiproxyError(400, INVALID_TYPE)
    checked_type: ToxicType = type_
    checked_stream: Stream = stream
    name = name or toxics.default_name(checked_type, checked_stream)
    try:
        toxics.check_name(name)
    except toxics.ToxicError as err:
        raise bad_body(str(err)) from None
    return Toxic(
        name=name,
        type=checked_type,
        stream=checked_stream,
        toxicity=_toxicity(data, 1.0),
        attributes=_attributes(type_, data, None),
    )


def changed_toxic(data: Any, toxic: Toxic) -> Toxic:
    """``toxic`` as POST or PATCH /proxies/{name}/toxics/{toxic} changes it: ``attributes``
    merge over its own, ``toxicity`` replaces its; anything else is ignored."""
    if not isinstance(data, dict):
        raise bad_body("a toxic must be a JSON object")
    return toxic.replace(
        toxicity=_toxicity(data, toxic.toxicity),
        attributes=_attributes(toxic.type, data, dict(toxic.attributes)),
    )
