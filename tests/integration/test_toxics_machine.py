"""A Hypothesis state machine over toxics added, changed and removed under open connections
that keep moving bytes: every byte comes back once and in order, and once the toxics and
the connections are gone, nothing of them is left (no stage alive, so no timer of one in
the loop; no socket; nothing held).

The route is served three ways: on the transports, on splice routes (``true``: every
connection starts on a SplicePipe; ``"auto"``: each is moved to one first), so that
spliced connections meet toxics too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from restcp.model import Toxic, ToxicType
from restcp.proxy.splice import SplicePipe
from restcp.proxy.staged_pipe import StagedPipe
from restcp.proxy.stages import Stage
from tests.integration.endings import echo_or_reset
from tests.integration.harness import (
    LOOPS,
    WAIT,
    Server,
    open_sockets,
    proxy,
    switch,
    toxic,
    until,
)

CONNECTIONS = 4

# The toxics that drop nothing, with attributes small enough for a step to take well
# under a second. A step sends up to 5,000 bytes on each connection, and a slicer's pieces
# go ``delay`` apart: pieces of 1 byte 2 ms apart would take 10 s, the step's WAIT, on any
# machine (and more on a loaded one, whose timers are late by more than the slicer catches
# up). So the delay is up to 2 ms only for pieces of 100 bytes or more (50 of them: about a
# tenth of a second), and below the millisecond the loops count in for smaller ones (no
# timer between pieces).
BIG_PIECES = 100
ATTRIBUTES: dict[ToxicType, st.SearchStrategy[dict[str, int]]] = {
    "latency": st.fixed_dictionaries({"latency": st.integers(0, 40), "jitter": st.integers(0, 20)}),
    "bandwidth": st.fixed_dictionaries({"rate": st.integers(100, 2000)}),
    "slicer": st.integers(1, 3000).flatmap(
        lambda average: st.fixed_dictionaries(
            {
                "average_size": st.just(average),
                "size_variation": st.integers(0, average - 1),
                "delay": st.integers(0, 2000 if average >= BIG_PIECES else 900),
            }
        )
    ),
    "slow_close": st.fixed_dictionaries({"delay": st.integers(0, 40)}),
}
KINDS = st.sampled_from(sorted(ATTRIBUTES))
STREAMS = st.sampled_from(["upstream", "downstream"])
TOXICITY = st.sampled_from([0.0, 0.5, 1.0])


def alive(kind: type) -> list[Any]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


class Toxics(RuleBasedStateMachine):
    """A route with CONNECTIONS echo connections; its toxics change at each step while
    every connection has bytes on their way."""

    loop_name = "uvloop"
    splice: bool | str = False

    def __init__(self) -> None:
        super().__init__()
        self.baseline = open_sockets()
        self.loop = LOOPS[self.loop_name]()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.stack = contextlib.AsyncExitStack()
        self.toxics: dict[str, Toxic] = {}
        self.count = 0
        self.rng = random.Random(0)
        self.sent = [bytearray() for _ in range(CONNECTIONS)]
        self.got = [bytearray() for _ in range(CONNECTIONS)]
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        server = await self.stack.enter_async_context(Server(echo_or_reset))
        self.px = await self.stack.enter_async_context(
            proxy(server.backend(), splice=self.splice, idle_timeout=0)
        )
        self.clients = [await self.px.connect() for _ in range(CONNECTIONS)]
        await until(lambda: len(self.px.manager.traffic) == CONNECTIONS)
        for relay in list(self.px.manager.traffic):
            await until(lambda relay=relay: relay.pipe is not None)  # type: ignore[misc]
            if self.splice == "auto":
                await until(lambda relay=relay: switch(relay, "splice"))  # type: ignore[misc, arg-type]
            if self.splice:
                assert isinstance(relay.pipe, SplicePipe)  # type: ignore[attr-defined]
        self.readers = [asyncio.ensure_future(self._read(i)) for i in range(CONNECTIONS)]

    async def _read(self, i: int) -> None:
        reader = self.clients[i][0]
        while chunk := await reader.read(1 << 16):
            self.got[i] += chunk
            assert self.sent[i].startswith(self.got[i]), f"connection {i}: out of order"

    def _send(self) -> None:
        for i, (_reader, writer) in enumerate(self.clients):
            data = self.rng.randbytes(self.rng.randrange(1, 5000))
            self.sent[i] += data
            writer.write(data)

    def _change(self, toxics: dict[str, Toxic]) -> None:
        """Send on every connection, change the toxics while those bytes are on their way,
        then wait until every echo is back, whole."""
        self._send()
        self.toxics = toxics

        async def change() -> None:
            await asyncio.sleep(0.002)
            await self.px.change(toxics=tuple(toxics.values()))
            await until(lambda: all(s == g for s, g in zip(self.sent, self.got, strict=True)))

        self.loop.run_until_complete(change())

    @rule(kind=KINDS, stream=STREAMS, toxicity=TOXICITY, data=st.data())
    def add(self, kind: ToxicType, stream: str, toxicity: float, data: st.DataObject) -> None:
        self.count += 1
        name = f"{kind}_{self.count}"
        made = toxic(
            kind,
            stream,
            name=name,
            toxicity=toxicity,
            **data.draw(ATTRIBUTES[kind]),  # type: ignore[arg-type]
        )
        self._change({**self.toxics, name: made})

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        if not self.toxics:
            return
        name = data.draw(st.sampled_from(sorted(self.toxics)))
        old = self.toxics[name]
        new = toxic(
            old.type,
            old.stream,
            name=name,
            toxicity=data.draw(TOXICITY),
            **data.draw(ATTRIBUTES[old.type]),
        )
        self._change({**self.toxics, name: new})

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        if not self.toxics:
            return
        name = data.draw(st.sampled_from(sorted(self.toxics)))
        self._change({k: v for k, v in self.toxics.items() if k != name})

    @invariant()
    def pipes_follow_the_toxics(self) -> None:
        """A connection meeting no toxic is on no StagedPipe; one on a StagedPipe has a
        stage for each toxic it meets (none left over)."""
        for relay in self.px.manager.traffic:
            pipe = relay.pipe  # type: ignore[attr-defined]
            if isinstance(pipe, StagedPipe):
                names = {s.toxic.name for way in (pipe.up, pipe.down) for s in way.stages}
                assert names <= set(self.toxics)
                assert names
            elif relay.meeting is not None:  # type: ignore[attr-defined]
                up, down = relay._staging()  # type: ignore[attr-defined]
                assert not up
                assert not down

    def teardown(self) -> None:
        async def finish() -> None:
            await self.px.change(toxics=())
            for _reader, writer in self.clients:
                writer.write_eof()
            await asyncio.wait_for(asyncio.gather(*self.readers), WAIT)
            assert self.sent == self.got
            for _reader, writer in self.clients:
                writer.close()
            runtime = self.px.manager.runtime(self.px.route.key)
            assert runtime is not None
            await until(lambda: not runtime.connections)
            await self.stack.aclose()
            for _ in range(10):
                await asyncio.sleep(0)

        try:
            self.loop.run_until_complete(finish())
        finally:
            self.loop.close()
        assert not self.errors, self.errors
        assert not alive(Stage), "a stage outlived its connection (a timer of it is left)"
        assert not alive(StagedPipe)
        assert open_sockets() == self.baseline


@pytest.mark.slow
@pytest.mark.parametrize("splice", [False, True, "auto"], ids=["transports", "splice", "auto"])
def test_toxics_changing_under_traffic(loop: str, splice: bool | str) -> None:
    machine = type("Machine", (Toxics,), {"loop_name": loop, "splice": splice})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
