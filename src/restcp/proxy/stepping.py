"""Running a loop coroutine without a Task: the data plane's one coroutine driver.

A new client is the hot path of a proxy, and a Task per client (plus an ``asyncio.timeout``)
cost more than the rest of its set-up. The loop's ``connect_accepted_socket`` and
``create_connection`` are coroutines that only ever await futures, so a ``Stepper`` runs
one itself: it sends into it, and the future it yields calls ``step`` back when done. That
is what a Task does, without the Task object, its context switch and its extra ``call_soon``
per step (docs/benchmarks.md has the history).

Cancelling works as a Task's does: the future the coroutine waits on is cancelled, and the
coroutine gets the CancelledError at its next step, *after* the callbacks the loop put on
that future have run (asyncio's ``remove_writer`` of a connecting fd among them). Closing
the coroutine at once would free its fd first, and such a late callback could then
unregister the fd's next owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("restcp.proxy")


class Stepper:
    """Runs one coroutine at a time to its end from the done callbacks of the futures it
    awaits; ``finished`` is told how it ended. Subclasses (the Connector) override it."""

    __slots__ = ("_cancelling", "_coro", "_waiting")

    def __init__(self) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._waiting: asyncio.Future[Any] | None = None
        self._cancelling = False

    @property
    def running(self) -> bool:
        return self._coro is not None

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` now (its first step runs before this returns)."""
        self._coro = coro
        self._cancelling = False
        self.step()

    def step(self, _done: object = None) -> None:
        coro = self._coro
        if coro is None:
            return
        self._waiting = None
        try:
            waiting = coro.send(None)
        except StopIteration:
            self._coro = None
            self.finished(None)
        except (Exception, asyncio.CancelledError) as err:
            self._coro = None
            self.finished(err)
        else:
            if waiting is None:  # a bare yield (sleep(0)): go on next turn
                asyncio.get_running_loop().call_soon(self.step)
                return
            self._waiting = waiting
            waiting.add_done_callback(self.step)
            if self._cancelling:
                waiting.cancel()

    def cancel(self) -> None:
        """Cancel as a Task is cancelled; ``finished`` comes later, with the outcome."""
        self._cancelling = True
        if self._waiting is not None:
            self._waiting.cancel()

    def finished(self, err: BaseException | None) -> None:
        """The coroutine returned (``err`` None) or raised. By default a failure is only
        logged: what the coroutine made has told its protocol already."""
        if err is not None:
            log.debug("client lost while being set up: %r", err)


def drive(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` to its end, nobody waiting for its result (the listener's accept: the
    coroutine makes the transport at its first step and then only waits for
    ``connection_made``)."""
    Stepper().run(coro)
