"""cancel_and_wait: a task that loses a cancellation (Python 3.11's wait_for can) is stopped
all the same, and one that never stops cannot hold its owner past the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from restcp.tasks import cancel_and_wait

log = logging.getLogger("test")


async def loses_one_cancel() -> None:
    # What a lost cancellation looks like to its task: it runs on.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    await asyncio.sleep(60)


async def never_stops() -> None:
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            continue


async def fails() -> None:
    raise RuntimeError("boom")


def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    async def main() -> None:
        task = asyncio.create_task(loses_one_cancel())
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await cancel_and_wait([task], 5.0, log)
        assert task.cancelled()
        assert asyncio.get_running_loop().time() - started < 1.0

    asyncio.run(main())


def test_a_task_that_never_stops_is_left_after_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        task = asyncio.create_task(never_stops(), name="stubborn")
        other = asyncio.create_task(fails(), name="failing")
        await asyncio.sleep(0)
        await cancel_and_wait([task, other], 0.3, log)
        assert not task.done()
        assert "task stubborn did not stop within 0.3s" in caplog.text
        assert "task failing failed" in caplog.text
        # The test's own clean-up: stop it the hard way.
        task.get_coro().close()  # type: ignore[union-attr]

    asyncio.run(main())
