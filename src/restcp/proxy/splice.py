"""Bulk relaying in the kernel: a pipe that moves a connection's bytes with ``os.splice``.

A connection on a splice route starts on the proxy.transport_pipe.TransportPipe. Once a
read there is bulk (and its transports' write buffers are empty), the Connection hands the
connection to a SplicePipe, which works on the *transports' own sockets* while they sit
idle, reading paused: nothing is duplicated, nothing closed, and handing back is ``stop``
and a transport pipe's ``start``. The bytes never enter Python:

    client ─► sock c ─splice─► pipe ─splice─► sock b ─► backend      (_Way "up")
    client ◄─ sock c ◄─splice─ pipe ◄─splice─ sock b ◄─ backend      (_Way "down")

Readiness comes from the node's proxy.splicer.Splicer (one edge-triggered epoll set). A
_Way keeps the readiness its events gave it (``src_ready``, ``dst_ready``) until a syscall
says EAGAIN, and pumps whenever either says go:

- out first (bytes handed over by the last pipe, then the pipe), then the source into the
  pipe's free room; a few rounds, then it waits for an edge, or, still going, lets the loop
  run other callbacks first (call_soon);
- backpressure: it reads its source only while the pipe has room, and a pipe that cannot
  drain into a slow destination stops the reads; the kernel's socket buffers then push back
  on the fast peer, so a connection holds at most one kernel pipe per direction;
- an EAGAIN of the splice in with bytes in the pipe may mean a full pipe (it has a number
  of page slots, not bytes), not an empty socket: the source stays ready, and is read again
  once the pipe has drained;
- EOF from the source (splice returns 0), once the pipe is empty, becomes
  ``shutdown(SHUT_WR)`` of the destination: a half-close, reported as ``owner.eof``; the
  other way flows on;
- an error on either socket (a reset), met by a call or reported by epoll, is reported as
  ``owner.failed``: the Connection stops the pipe and resets both transports.

Small messages are copied (``held``): a splice in and out plus an EAGAIN cost more syscalls
than a read and a write. The way whose bulk read brought the switch starts splicing, the
other copying (both copy on a connection spliced from its connect, ``"splice": true``); a
copying way splices once a read fills COPY_CHUNK, and a splicing way goes
back to copying after SMALL_RUN splices in a row that each brought less than SMALL. Once
both ways copy, the pipe tells its owner (``chatty``), which hands the connection back to
the transport pipe: it copies for less. ``held`` and the kernel pipe are never both filled
by reads (a way reads only when ``held`` is empty, and copies only when the pipe is), so
bytes leave in the order they came. Without a kernel pipe to be had (out of fds) a way
copies instead of failing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
from typing import ClassVar, Protocol

from restcp.proxy.pipes import Held, PipeOwner
from restcp.proxy.splicer import CAN_SPLICE, KernelPipe, Splicer

_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 0) | getattr(os, "SPLICE_F_MOVE", 0)
# (out, in) rounds per pump before the loop runs its other callbacks: one fast flow must not
# starve the other connections.
ROUNDS = 4
# A copy (read) that fills COPY_CHUNK is bulk: the way splices from then on. SMALL_RUN
# splices in a row that each bring less than SMALL into an empty pipe make it copy again
# (docs/benchmarks.md has the history of these numbers).
COPY_CHUNK = 64 * 1024
SMALL = 16 * 1024
SMALL_RUN = 4
_READABLE = (
    select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR if CAN_SPLICE else 0
)
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR if CAN_SPLICE else 0
_ENDING = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR if CAN_SPLICE else 0
_ERROR = select.EPOLLERR if CAN_SPLICE else 0


class Connected(Protocol):
    """A connected non-blocking TCP socket as a transport's ``get_extra_info("socket")``
    gives it: the pipe uses its fd and never closes it."""

    @property
    def family(self) -> int: ...

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, option: int, /) -> int: ...


class SplicePipe:
    """The two sockets of one connection, spliced both ways from ``start`` to ``stop``."""

    __slots__ = ("_chatty", "_client", "_down", "_loop", "_splicer", "_up", "owner", "stopped")

    raw: ClassVar[bool] = True

    def __init__(
        self,
        owner: PipeOwner,
        loop: asyncio.AbstractEventLoop,
        splicer: Splicer,
        client: Connected,
        backend: Connected,
        *,
        bulk_up: bool | None = None,
    ) -> None:
        """Register both sockets with the splicer (OSError, with nothing registered, when
        that fails). ``bulk_up``: the client's way (True) or the backend's (False) brought
        the switch with a bulk read, and starts splicing; the other starts copying (both
        do when None)."""
        self.owner = owner
        self._loop = loop
        self._splicer = splicer
        self.stopped = False
        self._chatty = False  # both ways copy: reported once a pump is over
        self._client = client
        self._up = _Way(self, client, backend, up=True, splicing=bulk_up is True)
        self._down = _Way(self, backend, client, up=False, splicing=bulk_up is False)
        splicer.register(loop, self._up.src_fd, self._on_client)
        try:
            splicer.register(loop, self._down.src_fd, self._on_backend)
        except BaseException:
            splicer.unregister(self._up.src_fd)
            raise

    # -- the Pipe interface --------------------------------------------------------------

    def start(self, held: Held) -> None:
        """The first pumps run on the loop's next turn: the owner hears of progress from
        callbacks only."""
        up, down = self._up, self._down
        up.held, up.eof, up.shut = held.up, held.up_eof, held.up_shut
        down.held, down.eof, down.shut = held.down, held.down_eof, held.down_shut
        up.schedule()
        down.schedule()

    def stop(self, keep: bool) -> Held:
        if self.stopped:
            return Held()
        self.stopped = True
        up, down = self._up, self._down
        self._splicer.unregister(up.src_fd)
        self._splicer.unregister(down.src_fd)
        return Held(
            up=up.take_out(keep),
            down=down.take_out(keep),
            up_eof=up.eof,
            down_eof=down.eof,
            up_shut=up.shut,
            down_shut=down.shut,
        )

    def holding(self) -> bool:
        up, down = self._up, self._down
        return bool(up.held or up.in_pipe or down.held or down.in_pipe)

    # -- events --------------------------------------------------------------------------

    def failed(self, way_socket: Connected) -> None:
        if not self.stopped:
            self.owner.failed("client" if way_socket is self._client else "backend")

    def _on_client(self, events: int) -> None:
        self._event(events, self._up, self._down)

    def _on_backend(self, events: int) -> None:
        self._event(events, self._down, self._up)

    def _event(self, events: int, reads: _Way, writes: _Way) -> None:
        """An edge of the socket ``reads`` reads from and ``writes`` writes to.

        Only a way that was waiting for it is pumped. One already ready and not scheduled
        is waiting for something else (the other socket, a pipe to drain): an edge per
        arriving segment, and an EPOLLOUT with each, would otherwise cost a pump each."""
        if events & _ENDING:
            reads.ending = True
        if events & _READABLE and not reads.src_ready:
            reads.src_ready = True
            reads.pump()
        if events & _WRITABLE and not writes.dst_ready and not self.stopped:
            writes.dst_ready = True
            writes.pump()
        if events & _ERROR and not self.stopped:
            # An error that no call ran into (neither way had anything to do with this
            # socket): a reset all the same. SO_ERROR takes it; 0 if a call had taken it.
            try:
                err = reads.src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except (OSError, ValueError):
                err = errno.EBADF
            if err:
                self.failed(reads.src)

    def way_copies(self) -> None:
        """A way went back to copying: once both have, the transports would do for less."""
        if self._up.small and self._down.small:
            self._chatty = True

    def report_chatty(self) -> bool:
        """At the end of a pump: tell the owner, once; True if it was told (the pipe may
        be stopped by then)."""
        if not self._chatty:
            return False
        self._chatty = False
        self.owner.chatty()
        return True


def _shut_wr(sock: Connected) -> None:
    """shutdown(SHUT_WR) of a socket the pipe does not own: through a socket object made
    on its fd for the call and detached after it (it must not close the fd)."""
    wrapper = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
    try:
        wrapper.shutdown(socket.SHUT_WR)
    finally:
        wrapper.detach()


class _Way:
    """One direction: src -> kernel pipe -> dst."""

    __slots__ = (
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
        "unspliceable",
        "up",
    )

    def __init__(
        self, link: SplicePipe, src: Connected, dst: Connected, *, up: bool, splicing: bool
    ) -> None:
        self.link = link
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.up = up
        self.pipe: KernelPipe | None = None
        self.in_pipe = 0  # bytes in the pipe
        self.held = b""  # bytes to send before the pipe's (or instead of it: copying)
        self.eof = False  # the source sent its FIN
        self.shut = False  # ... and it was passed on
        self.unspliceable = False  # the kernel cannot splice this source: copy always
        self.small = not splicing  # copy the next read (see COPY_CHUNK)
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

    def take_out(self, keep: bool) -> bytes:
        """Everything the way holds, in order (``keep``; else it is dropped), its pipe given
        back: the pipe is stopping."""
        data = self.held if keep else b""
        self.held = b""
        if self.pipe is not None and self.in_pipe and keep:
            chunks = [data]
            while self.in_pipe:
                chunk = os.read(self.pipe[0], self.in_pipe)
                if not chunk:
                    break
                chunks.append(chunk)
                self.in_pipe -= len(chunk)
            data = b"".join(chunks)
        self.drop_pipe()
        return data

    def pump(self) -> None:
        link = self.link
        if link.stopped:
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
            if self.src_ready and not (self.eof or self.held):
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
        owner = link.owner
        if got or sent:
            owner.moved(self.up, got)
            if link.stopped:
                return
        if self.eof and not self.shut and not self.held and not self.in_pipe:
            # Everything before the FIN is out: pass it on, and this way is done.
            self.shut = True
            with contextlib.suppress(OSError):  # a peer gone already: its own error ends it
                _shut_wr(self.dst)
            owner.eof(self.up)
            return
        link.report_chatty()

    def _out(self) -> int | None:
        """Send what is held, then what the pipe holds, as far as the destination takes it:
        the bytes sent (EAGAIN clears ``dst_ready``); None when it failed (reported)."""
        sent = 0
        if self.held:
            try:
                sent = os.write(self.dst_fd, self.held)
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
        if not self.in_pipe and (self.small or self.unspliceable):
            return self._copy()
        if self.pipe is None:
            self.pipe = self.link._splicer.pipes.take()
            if self.pipe is None:  # out of fds: copy this one
                return self._copy()
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
            # Not a socket the kernel splices from: copy from now on.
            self.unspliceable = True
            self.drop_pipe()
            return self._copy()
        if n:
            if n >= SMALL or self.in_pipe:
                self.smalls = 0
            else:
                self.smalls += 1
                if self.smalls >= SMALL_RUN:
                    self.small = True
                    self.smalls = 0
                    self.link.way_copies()
            self.in_pipe += n
        else:
            self.eof = True
        return n

    def _copy(self) -> int | None:
        """Read the source once into ``held`` (the pipe is empty)."""
        try:
            data = os.read(self.src_fd, COPY_CHUNK)
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
