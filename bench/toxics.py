"""``uv run python -m bench.toxics``: how long adding and removing a toxic takes with a
thousand connections open through the route.

    uv run python -m bench.toxics [--connections 1000] [--rounds 100] [--loop uvloop]

What is timed is what a route change costs the data plane: ``ProxyManager.apply`` of the
route with its toxics changed, that is the RouteRuntime update and the switch of every open
connection to a StagedPipe (added) or back to the TransportPipe (removed). The node's
route service and API add a store write on top of it (and, in a cluster, a message).

Everything runs in one process on one loop, pinned to the proxy core when it is free:
the proxy, an echo backend and the clients. The clients are idle while a change is timed
(each did one exchange, so every connection is relaying). Two cases:

- ``idle``: the latency toxic holds nothing when it is removed;
- ``holding``: every connection has a message held in the latency stage when it is
  removed, so each removal also flushes it to its client.

It prints p50, p99 and max of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

from bench.procs import PROXY_CORE
from restcp.core import toxics
from restcp.core.reconcile import Update
from restcp.model import Backend, Route, RouteSettings, Toxic
from restcp.proxy.listener import bind
from restcp.proxy.manager import ProxyManager
from restcp.proxy.staged_pipe import StagedPipe

LATENCY = Toxic(
    "latency_downstream", "latency", attributes=toxics.attributes("latency", {"latency": 10_000})
)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
    writer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(connections: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=connections)
    backend_port = server.sockets[0].getsockname()[1]
    manager = ProxyManager()
    sock = bind("127.0.0.1", 0)
    route = Route(
        "bench", 1, "127.0.0.1", sock.getsockname()[1],
        RouteSettings(splice=False, connect_timeout=30), (Backend(1, "127.0.0.1", backend_port),),
    )  # fmt: skip
    await manager.serve(route, sock)
    clients: list[socket.socket] = []
    for _ in range(connections):
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", route.port))
        await loop.sock_sendall(client, b"x")
        assert await loop.sock_recv(client, 1) == b"x"
        clients.append(client)

    async def change(toxics_: tuple[Toxic, ...]) -> float:
        nonlocal route
        route = dataclasses.replace(route, toxics=toxics_)
        began = time.perf_counter()
        await manager.apply([Update(route)])
        return time.perf_counter() - began

    runtime = manager.runtime(route.key)
    assert runtime is not None
    times: dict[str, list[float]] = {"add": [], "remove idle": [], "remove holding": []}

    async def each(step: Callable[[], Awaitable[None]]) -> None:
        for _ in range(rounds):
            await step()

    async def idle() -> None:
        times["add"].append(await change((LATENCY,)))
        assert all(isinstance(c.pipe, StagedPipe) for c in runtime.connections)  # type: ignore[attr-defined]
        times["remove idle"].append(await change(()))

    async def holding() -> None:
        await change((LATENCY,))
        for client in clients:
            client.send(b"y")
        deadline = time.monotonic() + 30
        while runtime.tallies["latency_downstream"].held < connections:
            assert time.monotonic() < deadline, "the echoes never came back"
            await asyncio.sleep(0.001)
        times["remove holding"].append(await change(()))
        for client in clients:
            while True:
                try:
                    if client.recv(1) == b"y":
                        break
                except BlockingIOError:
                    await asyncio.sleep(0.001)

    await each(idle)
    await each(holding)
    for client in clients:
        client.close()
    await manager.shutdown(5)
    server.close()
    await server.wait_closed()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    with contextlib.suppress(OSError):  # one core: what the proxy has in the suite
        os.sched_setaffinity(0, {PROXY_CORE})
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    times = runner(measure(args.connections, args.rounds))
    print(f"{args.connections} connections, {args.rounds} rounds, {args.loop}")
    print(f"{'change':<16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{name:<16} {statistics.median(ms):8.1f} {percentile(ms, 99):8.1f} {max(ms):8.1f}")


if __name__ == "__main__":
    main()
