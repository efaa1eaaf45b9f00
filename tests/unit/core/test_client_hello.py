"""The ClientHello reader, on ClientHellos Python's ssl module really sends (through memory
BIOs: no socket), split and re-recorded every way a network or a client may."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.core.client_hello import DEFAULT_LIMIT, Peek, peek


def client_hello(server_name: str | None = "db1.example.com") -> bytes:
    """The first flight of a real TLS client: one record holding its ClientHello."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(flight: bytes, sizes: list[int]) -> bytes:
    """``flight``'s handshake message re-cut into records of ``sizes`` bytes (the last
    takes the rest), as RFC 8446 5.1 allows a client to send it."""
    assert flight[0] == 22
    message = flight[5:]
    out = bytearray()
    at = 0
    for size in [*sizes, len(message)]:
        part = message[at : at + size]
        if not part:
            break
        out += bytes([22, 3, 1]) + len(part).to_bytes(2, "big") + part
        at += len(part)
    return bytes(out)


def test_a_real_client_hello_gives_its_server_name() -> None:
    assert peek(client_hello("db1.example.com")) == Peek("hello", "db1.example.com")


def test_no_server_name_is_a_hello_without_a_name() -> None:
    assert peek(client_hello(None)) == Peek("hello", None)


def test_names_come_in_lower_case_and_idna_as_sent() -> None:
    # ssl encodes a U-label to its A-label before sending: what the reader sees is that.
    assert peek(client_hello("DB1.Example.COM")).name == "db1.example.com"
    assert peek(client_hello("bücher.example")).name == "xn--bcher-kva.example"


def test_split_byte_by_byte_it_wants_more_until_the_last_byte() -> None:
    flight = client_hello("a.staging.example.com")
    for end in range(len(flight)):
        assert peek(flight[:end]).outcome == "more", end
    assert peek(flight) == Peek("hello", "a.staging.example.com")


def test_a_hello_over_several_records_is_joined() -> None:
    flight = client_hello("db2.example.com")
    several = records(flight, [1, 3, 7, 50, 100])
    assert several.count(b"\x16\x03\x01") >= 5
    for end in range(len(several)):
        assert peek(several[:end]).outcome == "more", end
    assert peek(several) == Peek("hello", "db2.example.com")


@given(st.lists(st.integers(1, 300), max_size=12), st.integers(0, 2000))
def test_any_cut_into_records_and_segments_reads_the_same(sizes: list[int], cut: int) -> None:
    flight = records(_FLIGHT, sizes)
    outcome = peek(flight[: min(cut, len(flight) - 1)])
    assert outcome.outcome == "more"
    assert peek(flight) == Peek("hello", "x.example.org")


_FLIGHT = client_hello("x.example.org")


def test_bytes_after_the_hello_change_nothing() -> None:
    # TLS 1.3 early data, or a second record, may follow at once.
    flight = client_hello("db1.example.com")
    assert peek(flight + b"\x17\x03\x03\x00\x05hello") == Peek("hello", "db1.example.com")


def test_truncated_for_good_is_still_more_until_the_limit() -> None:
    flight = client_hello()
    assert peek(flight[:-1], limit=len(flight) + 10).outcome == "more"
    assert peek(flight[:100], limit=100).outcome == "too_big"


def test_a_hello_longer_than_the_limit_is_too_big_from_its_header() -> None:
    header = bytes([22, 3, 1, 0x40, 0x00, 1]) + (DEFAULT_LIMIT + 1).to_bytes(3, "big")
    assert peek(header).outcome == "too_big"


def test_a_first_byte_that_is_not_a_handshake_is_not_tls() -> None:
    assert peek(b"GET / HTTP/1.1\r\n").outcome == "not_tls"
    assert peek(b"\x00").outcome == "not_tls"
    assert peek(b"\x80\x2e\x01\x03\x01").outcome == "not_tls"  # an SSLv2 ClientHello
    assert peek(b"").outcome == "more"


@pytest.mark.parametrize(
    "data",
    [
        bytes([22, 2, 0, 0, 4, 1, 0, 0, 0]),  # major version 2
        bytes([22, 3, 1, 0, 0]),  # an empty record
        bytes([22, 3, 1, 0x48, 0x01]),  # longer than a fragment may be
        bytes([22, 3, 1, 0, 4, 2, 0, 0, 0]),  # a ServerHello
        bytes([22, 3, 1, 0, 2, 1, 0]) + bytes([21, 3, 1, 0, 2, 2, 40]),  # then an alert
        bytes([22, 3, 1, 0, 5, 1, 0, 0, 1, 3]),  # a ClientHello of one byte
    ],
)
def test_malformed_handshakes(data: bytes) -> None:
    assert peek(data).outcome == "malformed"


def test_a_hello_whose_extensions_overrun_is_malformed() -> None:
    flight = bytearray(client_hello("db1.example.com"))
    # Cut the message short but keep its lengths: the body ends inside an extension.
    body_end = len(flight) - 20
    message_len = body_end - 9
    flight[3:5] = (body_end - 5).to_bytes(2, "big")
    flight[6:9] = message_len.to_bytes(3, "big")
    assert peek(bytes(flight[:body_end])).outcome == "malformed"


def test_a_name_that_is_not_ascii_is_malformed() -> None:
    flight = client_hello("db1.example.com")
    raw = flight.replace(b"db1.example.com", b"db\xff.example.com")
    assert peek(raw).outcome == "malformed"
