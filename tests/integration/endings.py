"""Backends and clients that end a connection every way a connection ends, for the leak
tests of the transports' relay (test_leaks.py) and of the spliced one (test_splice.py).

Each client takes the proxy's port; the sizes are arguments, since a spliced relay only
splices what is big enough to be worth it (proxy/splice.py, COPY_CHUNK).
"""

from __future__ import annotations

import asyncio
import random

from tests.integration.harness import HOST, WAIT, payload, read_all, read_outcome, reset


async def echo_or_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Echo until EOF, or reset at once when asked to (a chunk starting with RESET)."""
    total = 0
    while data := await reader.read(1 << 20):
        if data.startswith(b"RESET"):
            reset(writer)
            return -1
        total += len(data)
        writer.write(data)
        await writer.drain()
    return total


async def half_close(port: int, most: int = 100_000) -> None:
    """Up to ``most`` random bytes and a FIN; all of them echoed back, then EOF."""
    reader, writer = await asyncio.open_connection(HOST, port)
    data = payload(random.randrange(1, most))
    writer.write(data)
    writer.write_eof()
    assert await read_all(reader) == data
    writer.close()


async def full_close(port: int) -> None:
    """A FIN after the reply, without a half-close first, as most clients do."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
    writer.close()
    assert await read_outcome(reader) == "eof"


async def client_reset(port: int, size: int = 1000) -> None:
    """``size`` bytes out, the first 1000 of them back, then a reset."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"x" * size)
    await asyncio.wait_for(reader.readexactly(1000), WAIT)
    reset(writer)


async def backend_reset(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"RESET please")
    assert await read_outcome(reader) == "reset"
    writer.close()
