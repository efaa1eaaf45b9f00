"""Flow control in the real process: a fast backend and a slow client cost restcp a bounded
amount of memory, and the backend is held back by TCP, not buffered for without limit."""

from __future__ import annotations

import time

from tests.e2e.conftest import add_backend, create_route
from tests.e2e.peers import Backend, Streamer, connect
from tests.helpers import Node

TOTAL = 256 * 1024 * 1024
SLOW_SECONDS = 3.0
MAX_RSS_GROWTH_KIB = 16 * 1024
# What the kernel may hold between the backend and the slow client: four socket buffers
# (the backend's send, restcp's two, the client's receive), a few MB each on loopback.
MAX_IN_FLIGHT = 32 * 1024 * 1024

PATTERN = bytes(range(256)) * (1 << 12) * 2  # 2 MiB, a whole number of 256-byte periods


def check_pattern(data: bytes, offset: int) -> None:
    """The streamer sends byte ``i % 256`` at offset ``i``: a lost, repeated or reordered
    chunk breaks the pattern."""
    start = offset % 256
    for pos in range(0, len(data), len(PATTERN) // 2):
        piece = data[pos : pos + len(PATTERN) // 2]
        begin = (start + pos) % 256
        assert piece == PATTERN[begin : begin + len(piece)], f"corrupt at {offset + pos}"


def test_slow_client_bounds_memory_then_gets_every_byte(node: Node) -> None:
    streamer = Streamer(TOTAL)
    with Backend(streamer) as backend:
        port = create_route(node, "stream")["port"]
        add_backend(node, "stream", 1, backend.port)
        rss_before = node.rss_kib()
        rss_peak = rss_before
        received = 0
        with connect(port) as client:
            # About 10 KB/s: 1 KB every 100 ms.
            end = time.monotonic() + SLOW_SECONDS
            sent_halfway = 0
            while (now := time.monotonic()) < end:
                data = client.recv(1024)
                assert data
                check_pattern(data, received)
                received += len(data)
                rss_peak = max(rss_peak, node.rss_kib())
                if not sent_halfway and now > end - SLOW_SECONDS / 2:
                    sent_halfway = streamer.sent
                time.sleep(0.1)
            sent_slow = streamer.sent
            assert received < 64 * 1024
            assert rss_peak - rss_before < MAX_RSS_GROWTH_KIB, (rss_before, rss_peak)
            assert sent_slow < MAX_IN_FLIGHT, f"the backend sent {sent_slow} bytes to a slow reader"
            # Stalled, not trickling on into a buffer: at most what the client read since.
            assert sent_slow - sent_halfway < 1024 * 1024, (sent_halfway, sent_slow)
            assert not streamer.done.is_set()

            client.settimeout(30)
            while data := client.recv(1 << 20):
                check_pattern(data, received)
                received += len(data)
        assert streamer.done.wait(10)
        assert (received, streamer.sent) == (TOTAL, TOTAL)
        assert node.rss_kib() - rss_before < MAX_RSS_GROWTH_KIB
