"""Schemathesis hooks for testing restcp from its OpenAPI document: imported by
tests/e2e/test_openapi.py, and named by SCHEMATHESIS_HOOKS for the `st` command line.

A backend's ``ip`` may be a DNS host name, which the API resolves when it is written: a name
that does not resolve is refused with 422, and no schema can say which names resolve. The
generators make up names (``0.com``, ``kr6.e.io``) that resolve nowhere, least of all on a
machine without a network, so each well-formed name is sent as ``localhost``, a name that
resolves everywhere; a malformed one is left as it is, to be refused as it should be.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from restcp.model import canonical_host, is_host_name


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not (isinstance(body, dict) and isinstance(body.get("ip"), str)):
        return
    try:
        host = canonical_host(body["ip"])
    except ValueError:
        return
    if is_host_name(host):
        case.body = {**body, "ip": "localhost"}
