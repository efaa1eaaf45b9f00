"""The native relay engine (issue #16): accept, connect and relay of plain routes in
compiled code (``_relay.pyx``, built by hatch_build.py), on one epoll loop in a thread of
its own, without a Python object per connection.

``load`` is the one way in: the compiled module, or None with the reason (a build without a
C compiler has none; restcp then serves every route on its asyncio data plane).
"""

from __future__ import annotations

import socket
import struct
from types import ModuleType


def load() -> tuple[ModuleType | None, str]:
    """(the compiled engine, "") or (None, why it cannot be loaded)."""
    try:
        from restcp.engine import _relay
    except ImportError as err:
        return None, f"the native engine is not built ({err})"
    return _relay, ""


def sockaddr(ip: str, port: int) -> tuple[int, bytes]:
    """(family, struct sockaddr_in or sockaddr_in6) of an IP literal, as connect(2) takes it."""
    if ":" in ip:
        packed = socket.inet_pton(socket.AF_INET6, ip)
        return socket.AF_INET6, struct.pack("=H", socket.AF_INET6) + struct.pack(
            "!HI16sI", port, 0, packed, 0
        )
    packed = socket.inet_pton(socket.AF_INET, ip)
    return socket.AF_INET, struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, packed)


def peer(raw: bytes) -> tuple[str, int]:
    """(ip, port) of a struct sockaddr as accept(2) filled it."""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET6:
        port, _flow, packed, _scope = struct.unpack_from("!HI16sI", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, packed), port
    port, packed = struct.unpack_from("!H4s", raw, 2)
    return socket.inet_ntop(socket.AF_INET, packed), port
