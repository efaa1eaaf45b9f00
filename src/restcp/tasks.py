"""Stopping tasks for good.

In Python 3.11 one cancellation can be lost: ``asyncio.wait_for`` returns its result when the
awaited future completes in the same loop turn as the cancel (fixed in 3.12), and the Redis
client awaits its socket writes through ``wait_for``. A task that lost its cancel runs on, and
``await task`` waits for ever: a node stop that hangs. So a stopping owner cancels again
until its tasks have ended, up to a deadline, and then reports the ones left and goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

# How often a task that survived its cancellation is cancelled again.
RECANCEL_EVERY = 0.1


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[object]], within: float, log: logging.Logger
) -> None:
    """Cancel ``tasks`` (again while they run on) until all have ended or ``within`` seconds
    have passed. A task that ended with an error is logged; one still running is logged
    and left behind."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(
            pending, timeout=min(RECANCEL_EVERY, max(0.0, deadline - loop.time()))
        )
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
    for task in pending:
        log.error("task %s did not stop within %gs", task.get_name(), within)
