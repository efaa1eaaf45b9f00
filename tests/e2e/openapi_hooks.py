"""Schemathesis hooks for testing restcp from its OpenAPI document: imported by
tests/e2e/test_openapi.py, and named by SCHEMATHESIS_HOOKS for the `st` command line.

Each hook makes a generated request say what the document cannot, never more: a request the
document calls valid must still be one the API accepts, and the checks stay as strict.

- A backend's ``ip`` may be a DNS host name, which the API resolves when it is written: a
  name that does not resolve is refused with 422, and no schema can say which names
  resolve. The generators make up names (``0.com``, ``kr6.e.io``) that resolve nowhere,
  least of all on a machine without a network, so each well-formed name is sent as
  ``localhost``, a name that resolves everywhere; a malformed one is left as it is, to be
  refused as it should be.
- A toxic's ``clients`` are CIDR networks, the document's own format ``cidr``: generated as
  networks.
- A slicer's ``size_variation`` must be less than its ``average_size``, a relation JSON
  Schema cannot state: a valid body that breaks it gets a size_variation just below.
- A PATCH of a toxic takes the attributes of the toxic's type, which only the server knows:
  the hooks remember each toxic the run created or read (``after_call``), and a valid PATCH
  of one keeps the attributes of its type, in its type's ranges (the document gives each
  attribute the widest range any type does), and names its own type and stream. One node
  per run, so a toxic's path names it.
- A certificate's ``cert`` and ``key`` are PEM text that must parse and belong together,
  which no schema can say: a valid body gets a real pair, made once per run.
- A route's ``tls`` names certificates that must be stored, and its ``client_ca`` is PEM
  text that must parse: a valid body that has one is sent with ``tls: null`` (routes that
  terminate TLS are tests/e2e/test_tls_termination.py's). Likewise ``backend_tls``: its
  ``ca`` must parse, its ``certificate`` be stored, and it goes with neither ``sni`` nor
  ``proxy_protocol`` (tests/e2e/test_backend_tls.py has those routes).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import schemathesis
from hypothesis import strategies as st

from restcp.core.toxics import SPECS
from restcp.model import canonical_host, is_host_name
from tests.certs import Authority, Pem


def _networks(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
        st.ip_addresses(v=version),
        st.integers(0, bits),
    )


schemathesis.openapi.format(
    "cidr", st.one_of(_networks(4), _networks(6), st.ip_addresses().map(str))
)

_PAIR: list[Pem] = []


def _pair() -> Pem:
    if not _PAIR:
        _PAIR.append(Authority().issue("openapi.example.com"))
    return _PAIR[0]


# The toxics seen in answers, by path (".../toxics/NAME").
TOXICS: dict[str, dict[str, Any]] = {}


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("ip"), str):
        try:
            host = canonical_host(body["ip"])
        except ValueError:
            return
        if is_host_name(host):
            case.body = {**body, "ip": "localhost"}
        return
    if not _positive(case):
        return
    if isinstance(body.get("tls"), dict):
        case.body = body = {**body, "tls": None}
    if isinstance(body.get("backend_tls"), dict):
        case.body = body = {**body, "backend_tls": None}
    path = case.operation.path
    if path.startswith("/certificates") and "cert" in body and "key" in body:
        case.body = {**body, "cert": _pair().cert, "key": _pair().key}
    elif path.endswith("/toxics") and body.get("type") == "slicer":
        case.body = {**body, "attributes": _sliceable(body.get("attributes"), {})}
    elif path.endswith("/toxics/{toxic}") and case.method.upper() == "PATCH":
        known = TOXICS.get(case.formatted_path)
        if known is not None:
            case.body = _patch_of(known, body)


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: Any, response: Any) -> None:
    path = case.operation.path
    if path.endswith("/toxics") and response.status_code == 201:
        toxic = response.json()
        TOXICS[f"{case.formatted_path}/{toxic['name']}"] = toxic
    elif path.endswith("/toxics/{toxic}"):
        if response.status_code == 200:
            TOXICS[case.formatted_path] = response.json()
        elif response.status_code in (204, 404):
            TOXICS.pop(case.formatted_path, None)


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and bool(meta.generation.mode.is_positive)


def _sliceable(given: Any, current: dict[str, int]) -> Any:
    """Slicer attributes whose size_variation, once merged over ``current`` and the
    defaults, is less than the average_size."""
    if not isinstance(given, dict):
        return given
    defaults = {k: a.default for k, a in SPECS["slicer"].items()}
    merged = {**defaults, **current, **given}
    if merged["size_variation"] < merged["average_size"]:
        return given
    return {**given, "size_variation": merged["average_size"] - 1}


def _patch_of(known: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A valid PATCH ``body`` made one of the toxic ``known``: its own type and stream, and
    the attributes of its type only, in their ranges."""
    body = {k: known[k] if k in ("type", "stream") else v for k, v in body.items()}
    given = body.get("attributes")
    if not isinstance(given, dict):
        return body
    spec = SPECS[known["type"]]
    attributes = {k: min(max(v, spec[k].low), spec[k].high) for k, v in given.items() if k in spec}
    if known["type"] == "slicer":
        attributes = _sliceable(attributes, known["attributes"])
    return {**body, "attributes": attributes}
