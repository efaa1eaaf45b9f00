"""Active probes of one route's backends.

One task per backend, owned by ``RouteChecks`` and cancelled by it. A task probes, reports,
then waits out the rest of the interval, so probes of one backend never overlap and never
pile up behind a backend that hangs: each probe is cut at the check's ``timeout``.

A probe is a TCP connect (and a TLS handshake, for a route with ``backend_tls``: the
route's own context and server name), and, when the check has ``send``/``expect``, a
request and the start of its reply: ``expect`` is a prefix of the reply, or, written
``re:PATTERN``, a regular expression searched in the first bytes of it (enough for Redis
``PING`` -> ``+PONG`` or an HTTP status line).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from restcp.model import Backend, HealthCheck, is_host_name
from restcp.sockets import out_of_resources, reset_transport

# (host name, port) -> the address allowed now (proxy.runtime.resolve_allowed); OSError if
# none. Probes obey the address policy as relays do, at every probe.
Resolve = Callable[[str, int], Awaitable[str]]


async def _no_names(host: str, port: int) -> str:
    raise OSError(errno.EACCES, f"{host}: host names are probed through the node's policy")


MAX_REPLY = 4096


class ProbeTls(Protocol):
    """How a route speaks TLS to its backends (proxy.origination.Origination)."""

    @property
    def context(self) -> ssl.SSLContext: ...

    def server_hostname(self, host: str) -> str | None: ...


class HealthSink(Protocol):
    """Where results go: the route's runtime feeds them to core.health."""

    def check_result(self, backend_id: int, ok: bool, reason: str, latency: float) -> None: ...


def reply_matches(expect: str, reply: bytes) -> bool:
    if expect.startswith("re:"):
        return re.search(expect[3:].encode("latin-1"), reply) is not None
    return reply.startswith(expect.encode("latin-1"))


async def probe(
    ip: str,
    port: int,
    check: HealthCheck,
    resolve: Resolve = _no_names,
    tls: ProbeTls | None = None,
) -> str | None:
    """None if the backend passes, else why it failed. An OSError that says this node is
    out of resources (restcp.sockets) is raised instead: the probe could not be made, which
    says nothing of the backend. A host
    name is resolved through ``resolve`` within the check's timeout. With ``tls``, the
    connect is a TLS handshake too, and what is sent and expected goes inside it."""
    writer: asyncio.StreamWriter | None = None
    reply = b""
    host = ip
    try:
        async with asyncio.timeout(check.timeout):
            if is_host_name(ip):
                ip = await resolve(ip, port)
            if tls is None:
                reader, writer = await asyncio.open_connection(ip, port)
            else:
                reader, writer = await asyncio.open_connection(
                    ip,
                    port,
                    ssl=tls.context,
                    server_hostname=tls.server_hostname(host),
                    ssl_handshake_timeout=check.timeout + 1,  # the timeout above comes first
                )
            if check.send:
                writer.write(check.send.encode("latin-1"))
                await writer.drain()
            if check.expect is None:
                return None
            while len(reply) < MAX_REPLY:
                chunk = await reader.read(MAX_REPLY - len(reply))
                if not chunk:
                    break
                reply += chunk
                if reply_matches(check.expect, reply):
                    return None
                if not _may_still_match(check.expect, reply):
                    # A server that keeps its connection open (Redis answering -ERR) would
                    # otherwise be reported as a timeout, hiding the reply that failed.
                    break
            return f"unexpected reply {reply[:64]!r}"
    except TimeoutError:
        if reply:
            return f"timeout after {check.timeout:g}s, unexpected reply {reply[:64]!r}"
        return f"timeout after {check.timeout:g}s"
    except OSError as err:
        if out_of_resources(err):
            raise
        return _describe(err)
    finally:
        if writer is not None:
            # A reset, not a FIN: a probe leaves no TIME_WAIT behind on our side.
            reset_transport(writer.transport)


def _may_still_match(expect: str, reply: bytes) -> bool:
    if expect.startswith("re:"):
        return True  # a pattern may match bytes still to come
    prefix = expect.encode("latin-1")
    return prefix.startswith(reply[: len(prefix)])


def _describe(err: OSError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: the backend's certificate is refused: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        # Its errno is OpenSSL's, not the system's: the reason says what went wrong.
        return f"TLS handshake failed: {getattr(err, 'reason', None) or err}"
    # asyncio's connect errors read "Connect call failed ('10.0.0.1', 80)": the address the
    # user already knows, not why. The errno says why ("Connection refused").
    if isinstance(err, socket.gaierror) or err.errno == errno.EACCES:
        return err.strerror or str(err)  # "Name or service not known", a policy refusal
    if err.errno is not None and err.errno > 0:
        return os.strerror(err.errno)
    return err.strerror or str(err) or type(err).__name__


class RouteChecks:
    """The probes of one route's backends: one task per backend, updated in place, each
    cancelled and awaited by ``close``."""

    def __init__(self, sink: HealthSink, resolve: Resolve = _no_names) -> None:
        self._sink = sink
        self._resolve = resolve
        self._check: HealthCheck | None = None
        self._tls: ProbeTls | None = None
        self._tasks: dict[int, tuple[Backend, asyncio.Task[None]]] = {}
        # Cancelled tasks not yet finished: close() awaits them too.
        self._retired: set[asyncio.Task[None]] = set()

    def update(
        self, check: HealthCheck | None, backends: Sequence[Backend], tls: ProbeTls | None = None
    ) -> None:
        """Probe exactly ``backends`` with ``check`` (None: no probes at all), over ``tls``
        if not None."""
        if check != self._check or tls is not self._tls:
            self._cancel(list(self._tasks))
            self._check = check
            self._tls = tls
        if check is None:
            return
        wanted = {b.id: b for b in backends}
        # A backend replaced under the same id is probed afresh at its new address.
        self._cancel([bid for bid, (b, _) in self._tasks.items() if wanted.get(bid) != b])
        for backend_id, backend in wanted.items():
            if backend_id not in self._tasks:
                task = asyncio.get_running_loop().create_task(self._run(backend, check, tls))
                self._tasks[backend_id] = (backend, task)

    def _cancel(self, backend_ids: Sequence[int]) -> None:
        self._retired = {task for task in self._retired if not task.done()}
        for backend_id in backend_ids:
            _, task = self._tasks.pop(backend_id)
            task.cancel()
            self._retired.add(task)

    async def close(self) -> None:
        self._cancel(list(self._tasks))
        retired, self._retired = self._retired, set()
        # return_exceptions: one task that died of an error must not leave the rest unawaited.
        await asyncio.gather(*retired, return_exceptions=True)

    async def _run(self, backend: Backend, check: HealthCheck, tls: ProbeTls | None) -> None:
        while True:
            # perf_counter, not the loop's clock: uvloop's ticks in milliseconds, and a
            # sub-millisecond probe belongs in the histogram's lowest bucket, not at 0 or 1 ms.
            started = time.perf_counter()
            try:
                reason = await probe(backend.ip, backend.port, check, self._resolve, tls)
            except OSError as err:
                if out_of_resources(err):
                    # No verdict: a node out of descriptors must not mark its backends
                    # down (and then refuse clients once descriptors are back).
                    await asyncio.sleep(check.interval)
                    continue
                reason = f"probe error: {err!r}"
            except Exception as err:
                # A check the probe cannot even run (a ``send`` outside latin-1, a bad
                # pattern) must show as a failing backend, not end its checks silently.
                reason = f"probe error: {err!r}"
            latency = time.perf_counter() - started
            self._sink.check_result(backend.id, reason is None, reason or "", latency)
            await asyncio.sleep(max(0.0, check.interval - latency))
