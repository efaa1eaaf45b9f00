"""Socket mechanisms the data plane and the health checks share.

- A *reset*: ``SO_LINGER`` on with a zero timeout makes the next close send a RST instead of
  a FIN. The relay resets a peer when the other one reset (a truncated stream must not pass
  for a complete one), and a health probe resets its connection so that no TIME_WAIT is left
  behind on our side.
- *Out of resources*: the errors that say this node, not the peer, is short of descriptors,
  buffers or memory. An accept that fails so pauses the listener instead of dropping the
  client; a connect or a probe that fails so says nothing of the backend, which must not be
  marked down for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from typing import Protocol

OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

_LINGER_RESET = struct.pack("ii", 1, 0)


class _Settable(Protocol):
    """A socket, or the stand-in a transport's ``get_extra_info("socket")`` gives."""

    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...


def out_of_resources(err: BaseException) -> bool:
    """Whether ``err`` is this node running short (OUT_OF_RESOURCES), not a peer's doing."""
    return isinstance(err, OSError) and err.errno in OUT_OF_RESOURCES


def arm_reset(sock: _Settable) -> None:
    """Make the next close of ``sock`` a reset. Quietly nothing when the socket is gone
    already (ValueError: uvloop's stand-in socket of a transport whose fd is closed)."""
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def reset_transport(transport: asyncio.WriteTransport) -> None:
    """Close ``transport`` now with a reset, dropping whatever it still had to send."""
    sock: _Settable | None = transport.get_extra_info("socket")
    if sock is not None:
        arm_reset(sock)
    transport.abort()
