"""The event stream: routes and their counters as Server-Sent Events, about once a second.

    snapshot ── every route shown, with its stats, and the node ──► the reader
    update   ── each second: the node, the routes whose JSON changed, the keys removed

One stream per reader, over the API's own authentication (the ``Authorization`` header, so
a browser reads it with ``fetch`` and a stream reader; ``EventSource`` cannot send the
header, and a token must never go in a URL). The stream checks, each second, that the token
it was opened with still counts (revoked, or the admin token rotated: it ends), and ends
when the API shuts down (``closing``), so it never holds a stopping node.

Only what changed is sent: a route's JSON (settings, backends, health, counters) is compared
with what this reader was last sent, so an idle node with 1,000 routes sends a few hundred
bytes a second.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

# What a view is: the node's JSON, and each route's by "app/id".
View = tuple[dict[str, Any], Mapping[str, dict[str, Any]]]
INTERVAL = 1.0


def event(name: str, data: Any) -> bytes:
    # json.dumps never writes a newline, so the data is one "data:" line.
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(
    request: web.Request,
    view: Callable[[], Awaitable[View]],
    allowed: Callable[[], Awaitable[bool]],
    closing: asyncio.Event,
    interval: float = INTERVAL,
) -> web.StreamResponse:
    node, routes = await view()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # A reverse proxy in front must pass each event on as it comes.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sent = {key: json.dumps(route) for key, route in routes.items()}
    try:
        await response.write(event("snapshot", {"node": node, "routes": list(routes.values())}))
        while not closing.is_set():
            try:
                await asyncio.wait_for(closing.wait(), interval)
                break
            except TimeoutError:
                pass
            if not await allowed():
                await response.write(event("end", {"reason": "the token no longer counts"}))
                break
            node, routes = await view()
            changed = []
            for key, route in routes.items():
                text = json.dumps(route)
                if sent.get(key) != text:
                    sent[key] = text
                    changed.append(route)
            removed = [key for key in sent if key not in routes]
            for key in removed:
                del sent[key]
            await response.write(
                event("update", {"node": node, "changed": changed, "removed": removed})
            )
    except (ConnectionResetError, ConnectionError):
        # The reader went away: nothing to answer.
        return response
    return response
