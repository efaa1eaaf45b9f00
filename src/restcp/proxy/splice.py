"""Bulk relaying in the kernel: ``os.splice`` between a relay's two sockets, through pipes.

A route with ``"splice": true`` starts like any other: relay.py accepts the client, connects
to a backend (failover, timeouts, the PROXY header, the client's early bytes held), all on
the loop's transports. Once the connect is confirmed the Relay hands the two connections
over: it dups both fds, aborts the two transports (which closes only *their* fds; the
connections live on in the dups) and a SplicePipe moves the bytes from then on without them
ever entering Python:

    client ─► sock c ─splice─► pipe ─splice─► sock b ─► backend      (_Way "up")
    client ◄─ sock c ◄─splice─ pipe ◄─splice─ sock b ◄─ backend      (_Way "down")

Readiness comes from the node's Splicer: one epoll set, edge-triggered, holding every
spliced socket once (in, out, peer FIN), itself watched by the event loop as one reader.
Not the loop's own add_reader per socket: uvloop (libuv's uv_poll) stops a poll handle for
good on POLLERR, so the RST of a peer would never reach us; and edge triggering costs no
epoll_ctl per change of interest. A _Way keeps the readiness its events gave it
(``src_ready``, ``dst_ready``) until a syscall says EAGAIN, and pumps whenever either says
go:

- out first (bytes handed over by the Relay such as the PROXY header, then the pipe), then
  the source into the pipe's free room; a few rounds, then it waits for an edge, or, still
  going, lets the loop run other callbacks first (call_soon);
- backpressure: it reads its source only while the pipe has room, and a pipe that cannot
  drain into a slow destination stops the reads; the kernel's socket buffers then push back
  on the fast peer, so a connection holds at most one pipe per direction;
- an EAGAIN of the splice in with bytes in the pipe may mean a full pipe (it has a number
  of page slots, not bytes), not an empty socket: the source stays ready, and is read again
  once the pipe has drained;
- EOF from the source (splice returns 0), once the pipe is empty, becomes
  ``shutdown(SHUT_WR)`` of the destination: a half-close; the other way flows on;
- an error on either socket (a reset), met by a splice or reported by epoll, is reported to
  the Relay, which resets both sides.

A pipe is held only while a way has bytes in it: it comes from the Splicer's PipePool when a
read needs one and goes back, empty, when a pump ends with none in it. Idle connections hold
no pipe; a bulk flow takes and returns the same one. A pipe closed with bytes in it (a
reset) is closed, never pooled. Without a pipe to be had (out of fds) a way copies through
Python (recv/send) instead of failing the connection.

Small messages are copied too (``held``): a way starts copying and splices once a read fills
COPY_CHUNK, until SMALL_RUN splices in a row bring less than SMALL each (see COPY_CHUNK).
``held`` and the pipe are never both filled by reads: a way reads only when ``held`` is
empty, and copies only when the pipe is, so bytes leave in the order they came.

The Relay keeps the connection's accounting: byte counters and activity
(``splice_moved``), the half-close and idle timers (``splice_eof``), the ending
(``splice_failed``; its ``_end`` calls ``close``) and the access line once
``splice_closed`` has told it the sockets are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Protocol

# Linux only; elsewhere a splice route relays through the transports (relay.py checks).
CAN_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ") and hasattr(select, "epoll")
_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 0) | getattr(os, "SPLICE_F_MOVE", 0)
# Bigger pipes move more per syscall, and a pump costs mostly Python's overhead per call;
# 1 MiB is Linux's default pipe-max-size. Past the user's pipe-user-pages-soft quota the
# kernel refuses to grow a pipe, which then works at its default size.
PIPE_SIZE = 1 << 20
# Empty pipes kept for reuse. A pump returns its pipe when it ends empty, so a handful serves
# many flows; each pooled pipe counts against the user's pipe quota.
POOL_MAX = 16
# (out, in) rounds per pump before the loop runs its other callbacks: one fast flow must not
# starve the other connections.
ROUNDS = 4
# Small messages are copied through Python (recv, send), as HAProxy splices only what is
# worth it: a splice in and out plus an EAGAIN cost more syscalls than a recv and a send. A
# way starts copying; a recv that fills COPY_CHUNK means bulk, and it splices from then on;
# SMALL_RUN splices in a row that each bring less than SMALL into an empty pipe send it back
# to copying. One was not enough: a bulk flow read as fast as it comes often brings a little,
# and its next read, copied, cost about a tenth of the proxy's CPU in memory copies.
COPY_CHUNK = 64 * 1024
SMALL = 16 * 1024
SMALL_RUN = 4
# Events one dispatch takes from the epoll set; more wait for the loop's next turn.
EVENTS_PER_TURN = 256
_LINGER_RESET = struct.pack("ii", 1, 0)
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET if CAN_SPLICE else 0
_READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_ENDING = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR

Pipe = tuple[int, int, int]  # read fd, write fd, capacity in bytes


class PipePool:
    """Empty pipes, ready for a way to splice through."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = POOL_MAX) -> None:
        self._size = size
        self._keep = keep
        self._free: list[Pipe] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> Pipe | None:
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

    def give(self, pipe: Pipe, empty: bool) -> None:
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
    """What the node's splice relays share: the epoll set of their sockets, watched by the
    loop as one reader, and the pipe pool. Owned by the RelaySet; closed at shutdown."""

    def __init__(self, pipe_size: int = PIPE_SIZE, keep: int = POOL_MAX) -> None:
        self.pipes = PipePool(pipe_size, keep)
        self._epoll: select.epoll | None = None  # made with the first spliced socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._closed = False

    def __len__(self) -> int:
        """Sockets registered."""
        return len(self._handlers)

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
            # A handler may have ended another connection of this batch: its fd is gone
            # from the map (or already someone else's, to whom an extra edge is harmless).
            handler = self._handlers.get(fd)
            if handler is not None:
                handler(events)

    def close(self) -> None:
        """Stop: no socket may be registered any more (the node has reset its relays)."""
        self._closed = True
        self.pipes.close()
        if self._epoll is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


class Connected(Protocol):
    """A connected non-blocking TCP socket, as a transport's ``get_extra_info("socket")``."""

    @property
    def family(self) -> int: ...

    def fileno(self) -> int: ...


class SpliceOwner(Protocol):
    """What a SplicePipe reports to (the Relay)."""

    def splice_moved(self, up: bool, count: int) -> None:
        """Progress: ``count`` bytes read from the client (up) or the backend; 0 when only
        bytes went out (the destination is reading)."""

    def splice_eof(self, up: bool) -> None:
        """The client's (up) or the backend's FIN was forwarded."""

    def splice_failed(self, side: str) -> None:
        """``side`` ("client" or "backend") failed (reset): the owner ends with a reset."""

    def splice_closed(self) -> None:
        """Both sockets are closed: nothing of the connection is left."""


class SplicePipe:
    """The two connections of one relay, spliced both ways until ``close``."""

    __slots__ = (
        "_backend",
        "_client",
        "_down",
        "_loop",
        "_owner",
        "_splicer",
        "_up",
        "closed",
        "closing",
    )

    def __init__(
        self,
        owner: SpliceOwner,
        loop: asyncio.AbstractEventLoop,
        splicer: Splicer,
        client: Connected,
        backend: Connected,
    ) -> None:
        """Dup the fds of both sockets and register the dups (OSError, with nothing left
        open or registered, when that fails): the caller then closes its transports, and
        the connections stay open in these copies."""
        self._owner = owner
        self._loop = loop
        self._splicer = splicer
        self.closing = False  # graceful close: delivering what the ways hold, reading nothing
        self.closed = False
        socks: list[socket.socket] = []
        try:
            for conn in (client, backend):
                # Family and type given, not asked of the kernel (two getsockopt each); and
                # no setblocking: a dup shares the O_NONBLOCK its transport set.
                fd = os.dup(conn.fileno())
                try:
                    socks.append(socket.socket(conn.family, socket.SOCK_STREAM, 0, fd))
                except BaseException:
                    os.close(fd)
                    raise
            self._client, self._backend = socks
            splicer.register(loop, self._client.fileno(), self._on_client)
            splicer.register(loop, self._backend.fileno(), self._on_backend)
        except BaseException:
            for sock in socks:
                splicer.unregister(sock.fileno())
                sock.close()
            raise
        self._up = _Way(self, self._client, self._backend, up=True)
        self._down = _Way(self, self._backend, self._client, up=False)

    def start(self, held_up: bytes, held_down: bytes, up_eof: bool, down_eof: bool) -> None:
        """Begin: ``held_*`` go out first (the PROXY header and the client's early bytes; a
        backend's early bytes), ``*_eof`` are FINs received already. The first pumps run on
        the loop's next turn: the owner hears of progress from callbacks only."""
        up, down = self._up, self._down
        up.held, up.eof = held_up, up_eof
        down.held, down.eof = held_down, down_eof
        up.schedule()
        down.schedule()

    def holding(self) -> bool:
        """Whether bytes wait to go out (a peer is not reading)."""
        up, down = self._up, self._down
        return bool(up.held or up.in_pipe or down.held or down.in_pipe)

    def close(self, reset: bool) -> None:
        """Reset both connections now, or (graceful) stop reading, deliver what is held and
        then close both sockets."""
        if self.closed:
            return
        if reset:
            self._finish(reset=True)
            return
        self.closing = True
        self.settled()

    def settled(self) -> None:
        """A graceful close completes once nothing is held any more."""
        if self.closing and not self.closed and not self.holding():
            self._finish(reset=False)

    def failed(self, sock: socket.socket) -> None:
        self._owner.splice_failed("client" if sock is self._client else "backend")
        self._finish(reset=True)  # the owner's _end has, unless it had ended already

    def _on_client(self, events: int) -> None:
        self._event(events, self._up, self._down, self._client)

    def _on_backend(self, events: int) -> None:
        self._event(events, self._down, self._up, self._backend)

    def _event(self, events: int, reads: _Way, writes: _Way, sock: socket.socket) -> None:
        """An edge of ``sock``: the way that reads it and the way that writes it may go.

        Only a way that was waiting for it is pumped. One already ready and not scheduled
        is waiting for something else (the other socket, a pipe to drain): an edge per
        arriving segment, and an EPOLLOUT with each, would otherwise cost a pump each."""
        if events & _ENDING:
            reads.ending = True
        if events & _READABLE and not reads.src_ready:
            reads.src_ready = True
            reads.pump()
        if events & _WRITABLE and not writes.dst_ready and not self.closed:
            writes.dst_ready = True
            writes.pump()
        if events & select.EPOLLERR and not self.closed:
            # An error that no splice ran into (neither way had anything to do with this
            # socket): a reset all the same. SO_ERROR takes it; 0 if a call had taken it.
            try:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                err = errno.EBADF
            if err:
                self.failed(sock)

    def _finish(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for way in (self._up, self._down):
            way.drop_pipe()
        for sock in (self._client, self._backend):
            self._splicer.unregister(sock.fileno())
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
        self._owner.splice_closed()


class _Way:
    """One direction: src -> pipe -> dst."""

    __slots__ = (
        "copy",
        "dst",
        "dst_fd",
        "dst_ready",
        "ending",
        "eof",
        "held",
        "in_pipe",
        "link",
        "pipe",
        "scheduled",
        "shut",
        "small",
        "smalls",
        "src",
        "src_fd",
        "src_ready",
        "up",
    )

    def __init__(
        self, link: SplicePipe, src: socket.socket, dst: socket.socket, *, up: bool
    ) -> None:
        self.link = link
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.up = up
        self.pipe: Pipe | None = None
        self.in_pipe = 0  # bytes in the pipe
        self.held = b""  # bytes to send before the pipe's (or instead of it: see copy)
        self.eof = False  # the source sent its FIN
        self.shut = False  # ... and it was forwarded
        self.copy = False  # the kernel cannot splice this source: recv/send instead
        self.small = True  # the last read was small: copy the next (see COPY_CHUNK)
        self.smalls = 0  # small splices in a row (see SMALL_RUN)
        self.ending = False  # an edge said the source's FIN (or an error) has come
        # Readiness as the last edge left it, until a call says EAGAIN. Unknown at first:
        # ready, since trying costs one EAGAIN and waiting for an edge may cost for ever.
        self.src_ready = True
        self.dst_ready = True
        self.scheduled = False  # a pump waits in the loop's queue

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.link._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self.scheduled = False
        self.pump()

    def drop_pipe(self) -> None:
        if self.pipe is not None:
            self.link._splicer.pipes.give(self.pipe, empty=self.in_pipe == 0)
            self.pipe = None
            self.in_pipe = 0

    def pump(self) -> None:
        link = self.link
        if link.closed:
            return
        got = sent = 0
        for _ in range(ROUNDS):
            progress = False
            # Out first: what the pipe holds makes room for what comes in.
            if self.dst_ready and (self.held or self.in_pipe):
                out = self._out()
                if out is None:
                    return
                if out:
                    sent += out
                    progress = True
            if self.src_ready and not (self.eof or self.held or link.closing):
                n = self._in()
                if n is None:
                    return
                if n or self.eof:
                    got += n
                    progress = True
            if not progress:
                break
        else:
            self.schedule()  # more to do: after the loop's other callbacks
        if self.pipe is not None and not self.in_pipe:
            self.drop_pipe()  # back to the pool: an idle way holds no pipe
        if got or sent:
            link._owner.splice_moved(self.up, got)
            if link.closed:
                return
        if self.eof and not self.shut and not self.held and not self.in_pipe:
            if link.closing:
                link.settled()
                return
            # Everything before the FIN is out: forward it, and this way is done.
            self.shut = True
            with contextlib.suppress(OSError):  # a peer gone already: its own error ends it
                self.dst.shutdown(socket.SHUT_WR)
            link._owner.splice_eof(self.up)
            return
        if link.closing and not (self.held or self.in_pipe):
            link.settled()

    def _out(self) -> int | None:
        """Send what is held, then what the pipe holds, as far as the destination takes it:
        the bytes sent (EAGAIN clears ``dst_ready``); None when it failed (the link is
        reset then)."""
        sent = 0
        if self.held:
            try:
                sent = self.dst.send(self.held)
            except (BlockingIOError, InterruptedError):
                self.dst_ready = False
                return 0
            except OSError:
                self.link.failed(self.dst)
                return None
            self.held = self.held[sent:]
            if self.held:
                return sent
        if self.in_pipe:
            assert self.pipe is not None
            try:
                n = os.splice(self.pipe[0], self.dst_fd, self.in_pipe, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                self.dst_ready = False
                return sent
            except OSError:
                self.link.failed(self.dst)
                return None
            self.in_pipe -= n
            sent += n
        return sent

    def _in(self) -> int | None:
        """Read the source once, into the pipe or (copying) into ``held``: the bytes read,
        0 when none (``eof`` tells a FIN from nothing); None when it failed."""
        if not self.in_pipe and (self.small or self.copy):
            return self._recv()
        if self.pipe is None:
            self.pipe = self.link._splicer.pipes.take()
            if self.pipe is None:  # out of fds: copy this one
                return self._recv()
        room = self.pipe[2] - self.in_pipe
        if room <= 0:
            return 0
        try:
            n = os.splice(self.src_fd, self.pipe[1], room, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            # Into an empty pipe this means an empty socket; with bytes in it, perhaps only
            # a pipe out of slots: stay ready, and try again once it has drained.
            if not self.in_pipe:
                self.src_ready = False
            return 0
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS) or self.in_pipe:
                self.link.failed(self.src)
                return None
            # Not a socket the kernel splices from: copy through Python from now on.
            self.copy = True
            self.drop_pipe()
            return self._recv()
        if n:
            if n >= SMALL or self.in_pipe:
                self.smalls = 0
            else:
                self.smalls += 1
                if self.smalls >= SMALL_RUN:
                    self.small = True
                    self.smalls = 0
            self.in_pipe += n
        else:
            self.eof = True
        return n

    def _recv(self) -> int | None:
        """Read the source once into ``held`` (the pipe is empty)."""
        try:
            data = self.src.recv(COPY_CHUNK)
        except (BlockingIOError, InterruptedError):
            self.src_ready = False
            return 0
        except OSError:
            self.link.failed(self.src)
            return None
        n = len(data)
        if not n:
            self.eof = True
        elif n < COPY_CHUNK:
            # A short read of a stream socket took all its bytes (no pipe slots come into
            # it): wait for the next edge rather than pay for an EAGAIN. Unless its FIN is
            # in already: its edge has been and gone, and only a read brings the EOF.
            self.src_ready = self.ending
        else:
            self.small = False
        self.held = data
        return n
