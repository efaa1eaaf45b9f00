"""The address policy's say on a backend before it is stored.

The data plane judges every backend again at each connect and probe (``DataPlane.refusal``:
the node's own addresses change as routes come and go); this check is the one the route
service makes before a write, so that a user hears at once that an address is denied.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from restcp.errors import Forbidden, InvalidSpec, Unavailable
from restcp.model import is_host_name

# Seconds a write waits for a backend's host name to resolve before answering 503.
RESOLVE_TIMEOUT = 5.0

Refusal = Callable[[str, int], str | None]


async def check_backend(refusal: Refusal, host: str, port: int) -> None:
    """Raise Forbidden if ``refusal`` (the policy) denies ``host:port``. A host name must
    resolve now, to addresses that are all allowed: the data plane skips refused ones at
    connect time, but a name that points anywhere denied is a mistake or an attack worth
    telling the user about. InvalidSpec if the name does not exist; Unavailable if the
    resolver does not answer."""
    if not is_host_name(host):
        refused = refusal(host, port)
        if refused is not None:
            raise Forbidden(f"backend address not allowed: {refused}")
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError:
        raise Unavailable(
            f"cannot resolve {host!r}: no answer within {RESOLVE_TIMEOUT:g}s"
        ) from None
    except socket.gaierror as err:
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise InvalidSpec(f"cannot resolve {host!r}: {err.strerror}") from None
        raise Unavailable(f"cannot resolve {host!r}: {err.strerror}") from None
    for ip in dict.fromkeys(str(info[4][0]) for info in infos):
        refused = refusal(ip, port)
        if refused is not None:
            raise Forbidden(f"backend address not allowed: {host} resolves to {refused}")
