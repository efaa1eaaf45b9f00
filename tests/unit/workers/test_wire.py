"""workers.wire: every message survives its codec; a message from the wrong end is a
WireError; the counters a worker sends add up as the node sums them."""

from __future__ import annotations

import asyncio
import socket

import pytest

from restcp.dataplane import BackendCounts, RouteCounts
from restcp.model import Backend, Route, RouteSettings
from restcp.settings import Settings
from restcp.workers.wire import (
    FROM_WORKER,
    TO_WORKER,
    ApiListening,
    Applied,
    Counted,
    Hello,
    ProbeResult,
    Serve,
    ServeRoute,
    WireError,
    decode,
    frame,
    receive,
    receive_hello,
)

ROUTE = Route("a", 1, "127.0.0.1", 20000, RouteSettings(), (Backend(1, "127.0.0.1", 9000),))
COUNTS = RouteCounts({"limit": 2}, {1: BackendCounts(3, 1, 10, 20, 1)})
TO = [
    Serve(1, {ROUTE.key: ROUTE}),
    ServeRoute(2, ROUTE.key, ROUTE),
    ServeRoute(3, ROUTE.key, None),
    ProbeResult(ROUTE.key, 1, False, "Connection refused", 0.002),
    ApiListening(("127.0.0.1", 8001)),
]
FROM = [Applied(3), Counted({ROUTE.key: COUNTS}, (("b", 2),))]


@pytest.mark.parametrize("message", TO + FROM, ids=lambda m: type(m).__name__)
def test_every_message_survives_its_codec(message: object) -> None:
    kinds = TO_WORKER if message in TO else FROM_WORKER
    data = frame(message)  # type: ignore[arg-type]
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode(data[4:], kinds) == message


@pytest.mark.parametrize(
    ("message", "kinds"),
    [(Applied(1), TO_WORKER), (Serve(1, {}), FROM_WORKER), (("ack", 1), FROM_WORKER)],
    ids=["ack to a worker", "routes to the node", "a tuple"],
)
def test_a_message_its_reader_does_not_accept_is_a_wire_error(
    message: object, kinds: tuple[type, ...]
) -> None:
    with pytest.raises(WireError, match="unexpected message"):
        decode(frame(message)[4:], kinds)  # type: ignore[arg-type]


def test_messages_cross_a_socketpair_in_order_and_the_end_is_none() -> None:
    async def main() -> list[object]:
        left, right = socket.socketpair()
        hello = Hello(Settings(workers=2), ("127.0.0.1", 8001))
        left.sendall(frame(hello))
        assert receive_hello(right) == hello
        reader, writer = await asyncio.open_unix_connection(sock=right)
        left.sendall(b"".join(frame(m) for m in TO))
        left.close()
        got: list[object] = []
        while (message := await receive(reader, TO_WORKER)) is not None:
            got.append(message)
        writer.close()
        return got

    assert asyncio.run(main()) == TO


def test_a_closed_channel_before_hello_is_none() -> None:
    left, right = socket.socketpair()
    with right:
        left.close()
        assert receive_hello(right) is None


def test_route_counts_add_up_and_an_ended_process_keeps_its_totals() -> None:
    backends = {1: BackendCounts(1, 1, 1, 1, 0), 2: BackendCounts(5, 2, 6, 7, 8)}
    other = RouteCounts({"limit": 1, "no_backend": 4}, backends)
    total = COUNTS + other
    assert total.refused == {"limit": 3, "no_backend": 4}
    assert total.backends == {1: BackendCounts(4, 2, 11, 21, 1), 2: BackendCounts(5, 2, 6, 7, 8)}
    assert total.backend(9) == BackendCounts()
    # Adding never changes either side.
    assert RouteCounts({"limit": 2}, {1: BackendCounts(3, 1, 10, 20, 1)}) == COUNTS
    assert other.refused == {"limit": 1, "no_backend": 4}
    assert total.ended().backends == {
        1: BackendCounts(4, 0, 11, 21, 1), 2: BackendCounts(5, 0, 6, 7, 8)
    }  # fmt: skip
