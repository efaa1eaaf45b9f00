"""What the node's splice pipes share: one epoll set for their sockets, and a pool of pipes.

Readiness of spliced sockets comes from one epoll set per node, edge-triggered, holding
every spliced socket once (in, out, peer FIN), itself watched by the event loop as one
reader. Not the loop's own ``add_reader`` per socket: uvloop (libuv's uv_poll) stops a
poll handle for good on POLLERR, so the RST of a peer would never reach us; and edge
triggering costs no ``epoll_ctl`` per change of interest.

A kernel pipe is held only while a way of a splice pipe has bytes in it: it comes from the
PipePool when a read needs one and goes back, empty, when a pump ends with none in it, so
idle connections hold no pipe and a bulk flow takes and returns the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
from collections.abc import Callable

# Linux only; elsewhere a splice route relays through its transports (proxy/connection.py).
CAN_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ") and hasattr(select, "epoll")
# Bigger pipes move more per syscall, and a pump costs mostly Python's overhead per call;
# 1 MiB is Linux's default pipe-max-size. Past the user's pipe-user-pages-soft quota the
# kernel refuses to grow a pipe, which then works at its default size.
PIPE_SIZE = 1 << 20
# Empty pipes kept for reuse. A pump returns its pipe when it ends empty, so a handful serves
# many flows; each pooled pipe counts against the user's pipe quota.
POOL_MAX = 16
# Events one dispatch takes from the epoll set; more wait for the loop's next turn.
EVENTS_PER_TURN = 256
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET if CAN_SPLICE else 0

KernelPipe = tuple[int, int, int]  # read fd, write fd, capacity in bytes


class PipePool:
    """Empty kernel pipes, ready for a way to splice through."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = POOL_MAX) -> None:
        self._size = size
        self._keep = keep
        self._free: list[KernelPipe] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> KernelPipe | None:
        """An empty pipe; None when the process is out of fds."""
        if self._free:
            return self._free.pop()
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            capacity = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self._size)
        except OSError:  # EPERM past the user's pipe quota: the pipe keeps its own size
            capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return r, w, capacity

    def give(self, pipe: KernelPipe, empty: bool) -> None:
        """Return a pipe: kept when empty and there is room, closed otherwise (bytes left in
        a pipe belong to a connection that is gone)."""
        if empty and not self._closed and len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        """Close the pooled pipes; pipes given back from now on are closed too."""
        self._closed = True
        free, self._free = self._free, []
        for r, w, _capacity in free:
            os.close(r)
            os.close(w)


class Splicer:
    """The epoll set of the node's spliced sockets, watched by the loop as one reader, and
    the pipe pool. Owned by the node's proxy.traffic.Traffic; closed at shutdown."""

    def __init__(self, pipe_size: int = PIPE_SIZE, keep: int = POOL_MAX) -> None:
        self.pipes = PipePool(pipe_size, keep)
        self._epoll: select.epoll | None = None  # made with the first spliced socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._closed = False

    def __len__(self) -> int:
        """Sockets registered."""
        return len(self._handlers)

    def descriptors(self) -> int:
        """The descriptors it holds itself: its epoll set, and the pooled pipes' two ends."""
        return (self._epoll is not None) + 2 * len(self.pipes)

    def register(
        self, loop: asyncio.AbstractEventLoop, fd: int, handler: Callable[[int], None]
    ) -> None:
        """Call ``handler(events)`` on each edge of ``fd``. OSError when it cannot be had."""
        if self._closed:
            raise OSError(errno.EBADF, "splicing is shut down")
        if self._epoll is None:
            self._epoll = select.epoll()
            self._loop = loop
            loop.add_reader(self._epoll.fileno(), self._dispatch)
        self._epoll.register(fd, _WATCH)
        self._handlers[fd] = handler

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _dispatch(self) -> None:
        if self._epoll is None:
            return
        for fd, events in self._epoll.poll(0, EVENTS_PER_TURN):
            # A handler may have stopped another pipe of this batch: its fd is gone from
            # the map (or already someone else's, to whom an extra edge is harmless).
            handler = self._handlers.get(fd)
            if handler is not None:
                handler(events)

    def close(self) -> None:
        """Stop: no socket may be registered any more (the node has reset its connections)."""
        self._closed = True
        self.pipes.close()
        if self._epoll is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
