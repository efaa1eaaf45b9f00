"""The native engine's relay under random interleavings (Hypothesis): each peer writes
chunks of random sizes, half-closes, or resets, in a random order, while both keep reading;
or both fall silent past the idle timeout.

Whatever the order: with no reset, each side gets exactly the other's bytes and then EOF,
and the access line counts them (an idle timeout closes both gracefully, as nothing is left
unread); with a reset, each side has a prefix of the other's bytes and the other side ends
too. Either way the engine's connection ends, and no descriptor of the process is left open.
Each runs on a route that copies, one that splices (``true``: both ways through kernel
pipes from the first byte) and one that splices bulk (``"auto"``: a way splices once a read
fills 64 KiB, and copies again after small splices), whose pipes must be closed too.
Behind a PROXY v2 header (on each route), the same: the backend reads the header first,
then the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restcp.core import proxy_protocol
from tests.integration.harness import (
    HOST,
    WAIT,
    Server,
    access_lines,
    open_fds,
    payload,
    proxy,
    reset,
    run,
    spliced,
    until,
)

WRITE = st.tuples(st.sampled_from(["client_write", "backend_write"]), st.integers(1, 400_000))
END = st.tuples(
    st.sampled_from(["client_fin", "backend_fin", "client_reset", "backend_reset", "pause"]),
    st.just(0),
)
ACTIONS = st.lists(st.one_of(WRITE, WRITE, END), max_size=10)
# ... then both peers quiet for longer than the idle timeout, which must end the connection.
SILENT_ACTIONS = ACTIONS.map(lambda actions: [*actions, ("silence", 0)])
# The route's splice setting (harness.NATIVE_SPLICE).
ENGINE_CASES = pytest.mark.parametrize("engine", ["native", "native-splice", "native-auto"])
# Short, so that a silence ends the connection soon; long enough that a loaded machine's
# stall between two actions does not.
IDLE = 0.5


@dataclass
class Side:
    """One peer of the relayed connection: what it sent, and what it read (in a task)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: bytearray = field(default_factory=bytearray)
    got: bytearray = field(default_factory=bytearray)
    outcome: asyncio.Task[str] | None = None
    done_writing: bool = False

    def start(self) -> None:
        self.outcome = asyncio.create_task(self._read())

    async def _read(self) -> str:
        try:
            while chunk := await self.reader.read(1 << 16):
                self.got += chunk
        except ConnectionResetError:
            return "reset"
        return "eof"

    async def write(self, size: int) -> None:
        if self.done_writing:
            return
        data = payload(size)
        self.sent += data
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(self.writer.drain(), WAIT)

    def fin(self) -> None:
        if not self.done_writing:
            self.done_writing = True
            self.writer.write_eof()

    def reset(self) -> None:
        self.done_writing = True
        reset(self.writer)


# A v2 header of two IPv4 addresses: signature, 4 bytes, 12 of addresses and ports.
V2_IPV4 = 28


async def scenario(
    actions: list[tuple[str, int]],
    idle_timeout: float = 3600.0,
    engine: str = "native",
    header: bool = False,
) -> tuple[str, bytes, bytes]:
    """Play ``actions`` (``header``: behind a PROXY v2 header); (how it ended: "closed",
    "reset" or "idle"; the bytes the client sent, the backend got)."""
    backend_side: asyncio.Future[Side] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()
    headers: list[bytes] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if header:
            headers.append(await reader.readexactly(V2_IPV4))
        side = Side(reader, writer)
        side.start()
        backend_side.set_result(side)
        await finished.wait()  # the scenario closes its socket (the server then closes it)

    async with (
        Server(backend) as server,
        proxy(
            server.backend(), idle_timeout=idle_timeout, engine=engine,
            proxy_protocol="v2" if header else None,
        ) as px,
    ):  # fmt: skip
        baseline = open_fds()
        reader, writer = await px.connect()
        client = Side(reader, writer)
        client.start()
        back = await asyncio.wait_for(backend_side, WAIT)
        if header:
            address = writer.get_extra_info("sockname")
            expected = proxy_protocol.v2((address[0], address[1]), (HOST, px.port))
            assert headers == [expected]
        sides = {"client": client, "backend": back}
        was_reset = idle = False
        for action, size in actions:
            if was_reset or idle:
                break
            who, _, what = action.partition("_")
            if action == "pause":
                await asyncio.sleep(0.01)
            elif action == "silence":
                # Past the timeout (and the engine's 50 ms sweep), once every byte is across.
                await until(lambda: len(back.got) == len(client.sent))
                await until(lambda: len(client.got) == len(back.sent))
                await asyncio.sleep(idle_timeout * 1.5)
                idle = True
            elif what == "write":
                await sides[who].write(size)
            elif what == "fin":
                sides[who].fin()
            else:
                sides[who].reset()
                was_reset = True
        if not was_reset and not idle:
            client.fin()
            back.fin()
        outcomes = await asyncio.wait_for(
            asyncio.gather(client.outcome, back.outcome),  # type: ignore[arg-type]
            WAIT,
        )
        if not was_reset:
            assert outcomes == ["eof", "eof"]
            assert bytes(back.got) == bytes(client.sent)
            assert bytes(client.got) == bytes(back.sent)
        else:
            assert back.sent.startswith(client.got)
            assert client.sent.startswith(back.got)
        assert px.manager.engine is not None
        await asyncio.wait_for(px.manager.engine.wait_empty(), WAIT)
        finished.set()
        await server.result()
        writer.close()
        # Every socket of the connection is closed: the proxy's two and both peers'.
        await until(lambda: open_fds() == baseline)
        ending = "reset" if was_reset else "idle" if idle else "closed"
        return ending, bytes(client.sent), bytes(back.got)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(actions=ACTIONS)
@ENGINE_CASES
def test_any_interleaving_is_relayed_exactly(
    engine: str, actions: list[tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    check(actions, 3600.0, caplog, engine)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(actions=SILENT_ACTIONS)
@ENGINE_CASES
def test_any_interleaving_then_silence_ends_by_the_idle_timeout(
    engine: str, actions: list[tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    check(actions, IDLE, caplog, engine)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(actions=ACTIONS)
@ENGINE_CASES
def test_any_interleaving_behind_a_proxy_header(
    engine: str, actions: list[tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    """The header is not counted in bytes_up, nor taken for the client's bytes (nor
    spliced after them)."""
    check(actions, 3600.0, caplog, engine, header=True)


def check(
    actions: list[tuple[str, int]],
    idle_timeout: float,
    caplog: pytest.LogCaptureFixture,
    engine: str,
    header: bool = False,
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO, "restcp.access")
    ending, sent, _got = run("uvloop", scenario(actions, idle_timeout, engine, header))
    (line,) = access_lines(caplog)
    if engine == "native-splice":
        # Spliced from its connect on, unless the engine never saw it connected (a backend
        # that resets at once): then no backend is logged either.
        assert spliced(caplog) == [" backend=- " not in line], line
    elif engine == "native":
        assert spliced(caplog) == [False]
    if ending == "closed":
        assert f"bytes_up={len(sent)} " in line
        assert line.endswith("end=closed")
    elif ending == "idle":
        assert f"bytes_up={len(sent)} " in line
        assert line.endswith(("end=idle_timeout", "end=closed")), line  # closed: both FINs first
    else:
        assert "end=" in line
