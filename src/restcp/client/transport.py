"""The two ways of running a plan (plan.py): blocking on ``httpx.Client`` and on asyncio with
``httpx.AsyncClient``. They are the only client code that waits; each step of a plan is
one request or one pause, and the loops below differ only where one blocks and the other
awaits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import httpx

from restcp.client.errors import Unreachable
from restcp.client.plan import Applied, Pause, Plan, Reply, Request, UnknownFields

T = TypeVar("T")


def _unreachable(
    http: httpx.Client | httpx.AsyncClient, request: Request, err: Exception
) -> Unreachable:
    what = "no answer in time" if isinstance(err, httpx.TimeoutException) else str(err)
    return Unreachable(
        f"cannot reach the API at {http.base_url}: {what or type(err).__name__}",
        request=f"{request.method} {request.path}",
    )


def _send_kwargs(request: Request) -> dict[str, Any]:
    return {} if request.json is None else {"json": request.json}


class SyncTransport:
    """Runs plans on an ``httpx.Client``, blocking."""

    def __init__(self, http: httpx.Client, unknown_fields: UnknownFields) -> None:
        self.http = http
        self.unknown_fields = unknown_fields

    def run(self, plan: Plan[T]) -> T:
        outcome: Any = None
        error: Exception | None = None
        while True:
            try:
                step = plan.send(outcome) if error is None else plan.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            outcome, error = None, None
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                response = self.http.request(step.method, step.path, **_send_kwargs(step))
            except httpx.TransportError as err:
                error = _unreachable(self.http, step, err)
            else:
                outcome = Reply(response, self.unknown_fields)

    @contextmanager
    def hold(self, plan: Plan[Applied[T]]) -> Iterator[T]:
        applied = self.run(plan)
        try:
            yield applied.value
        finally:
            self.run(applied.undo)

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    """Runs plans on an ``httpx.AsyncClient``, in the running event loop."""

    def __init__(self, http: httpx.AsyncClient, unknown_fields: UnknownFields) -> None:
        self.http = http
        self.unknown_fields = unknown_fields

    async def run(self, plan: Plan[T]) -> T:
        outcome: Any = None
        error: Exception | None = None
        while True:
            try:
                step = plan.send(outcome) if error is None else plan.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            outcome, error = None, None
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                continue
            try:
                response = await self.http.request(step.method, step.path, **_send_kwargs(step))
            except httpx.TransportError as err:
                error = _unreachable(self.http, step, err)
            else:
                outcome = Reply(response, self.unknown_fields)

    @asynccontextmanager
    async def hold(self, plan: Plan[Applied[T]]) -> AsyncIterator[T]:
        applied = await self.run(plan)
        try:
            yield applied.value
        finally:
            await self.run(applied.undo)

    async def aclose(self) -> None:
        await self.http.aclose()
