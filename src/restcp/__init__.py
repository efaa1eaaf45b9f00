"""restcp: a REST-driven TCP proxy and layer-4 load balancer.

``restcp.Client`` and ``restcp.AsyncClient`` drive its API from Python (restcp.client); they
load on first use, so that ``restcp serve`` and its workers never import the client's HTTP
library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from restcp.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from restcp import client

        return getattr(client, name)
    raise AttributeError(f"module 'restcp' has no attribute {name!r}")
