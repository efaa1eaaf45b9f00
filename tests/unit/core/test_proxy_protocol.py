"""PROXY protocol headers, byte for byte against HAProxy's proxy-protocol.txt.

Expected bytes are written out from the spec's layout, never produced by the code under
test; where a test covers many addresses, the oracle is the C library's inet_pton (what
HAProxy itself parses with).
"""

from __future__ import annotations

import re
import socket
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proxyprotocol.result import ProxyResultIPv4
from proxyprotocol.v2 import ProxyProtocolV2

from restcp.core.proxy_protocol import V2_SIGNATURE, TlsInfo, header, v1, v2

# Section 2.2: "\x0D \x0A \x0D \x0A \x00 \x0D \x0A \x51 \x55 \x49 \x54 \x0A"
SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
V1_MAX = 107  # section 2.1: the longest line a receiver must accept, CRLF included

ports = st.integers(0, 65535)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(str)


# Version 1 ------------------------------------------------------------------------------


def test_v1_tcp4_worst_case_from_the_spec() -> None:
    line = v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert line == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line) == 56


def test_v1_tcp4_example_from_the_spec() -> None:
    line = v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert line == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_tcp6_worst_case_from_the_spec() -> None:
    full = ":".join(["ffff"] * 8)
    line = v1((full, 65535), (full, 65535))
    assert line == f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104


def test_v1_tcp6_full_addresses() -> None:
    line = v1(
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", 40000),
        ("2001:db8:1:2:3:4:5:6", 443),
    )
    assert line == (
        b"PROXY TCP6 2001:db8:85a3:8d3:1319:8a2e:370:7348 2001:db8:1:2:3:4:5:6 40000 443\r\n"
    )


def test_v1_tcp6_zero_runs_are_compressed_like_inet_ntop() -> None:
    line = v1(("2001:0db8:0000:0000:0000:0000:0000:0001", 1), ("::1", 2))
    assert line == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


def test_v1_ports_have_no_leading_zeros() -> None:
    assert v1(("10.0.0.1", 0), ("10.0.0.2", 7)) == b"PROXY TCP4 10.0.0.1 10.0.0.2 0 7\r\n"


def test_v1_ipv4_mapped_ipv6_is_folded_to_tcp4() -> None:
    line = v1(("::ffff:192.0.2.7", 5000), ("::ffff:198.51.100.1", 80))
    assert line == b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 80\r\n"


def test_v1_ipv4_mapped_source_with_ipv4_destination_is_tcp4() -> None:
    line = v1(("::ffff:192.0.2.7", 5000), ("198.51.100.1", 80))
    assert line == b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 80\r\n"


def test_v1_link_local_zone_id_is_not_sent() -> None:
    # getpeername() spells a link-local IPv6 peer with its zone; the spec's grammar has none.
    line = v1(("fe80::1%eth0", 5000), ("fe80::2%eth0", 80))
    assert line == b"PROXY TCP6 fe80::1 fe80::2 5000 80\r\n"


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (None, None),
        (("192.0.2.1", 1), None),
        (None, ("192.0.2.1", 1)),
        (("192.0.2.1", 1), ("2001:db8::1", 2)),  # mixed families
        (("2001:db8::1", 1), ("192.0.2.1", 2)),
        (("", 0), ("192.0.2.1", 2)),  # no peer address at all
        (("/run/restcp.sock", 0), ("192.0.2.1", 2)),  # not an IP
    ],
)
def test_v1_unknown_when_the_addresses_cannot_be_told(src, dst) -> None:
    assert v1(src, dst) == b"PROXY UNKNOWN\r\n"


@given(src=ipv4s, dst=ipv4s, sport=ports, dport=ports)
def test_v1_tcp4_any_address(src: str, dst: str, sport: int, dport: int) -> None:
    line = v1((src, sport), (dst, dport))
    assert line == f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode("ascii")
    assert len(line) <= V1_MAX


def _spec_ipv6(text: str) -> bool:
    """Section 2.1: colon-separated groups of at most 4 hex digits, at most one "::"."""
    groups = text.split(":")
    return (
        text.count("::") <= 1
        and ":::" not in text
        and all(re.fullmatch(r"[0-9a-fA-F]{0,4}", g) for g in groups)
        and (len(groups) == 8 or "::" in text)
    )


@given(src=ipv6s, dst=ipv6s, sport=ports, dport=ports)
def test_v1_tcp6_any_address(src: str, dst: str, sport: int, dport: int) -> None:
    line = v1((src, sport), (dst, dport))
    assert len(line) <= V1_MAX
    assert line.endswith(b"\r\n")
    proxy, family, text_src, text_dst, text_sport, text_dport = line[:-2].decode().split(" ")
    assert (proxy, family) == ("PROXY", "TCP6")
    for text, ip in [(text_src, src), (text_dst, dst)]:
        # inet_ntop would write ::/96 with a dotted tail, which the spec's grammar lacks.
        assert _spec_ipv6(text), text
        pton = socket.inet_pton(socket.AF_INET6, text)
        assert pton == socket.inet_pton(socket.AF_INET6, ip)
    assert (text_sport, text_dport) == (str(sport), str(dport))


# Version 2 ------------------------------------------------------------------------------


def test_v2_signature_is_the_specs() -> None:
    assert V2_SIGNATURE == SIGNATURE
    assert len(SIGNATURE) == 12


def test_v2_tcp4() -> None:
    expected = (
        SIGNATURE
        + b"\x21"  # version 2, command PROXY
        + b"\x11"  # AF_INET, STREAM
        + b"\x00\x0c"  # 12 address bytes follow
        + bytes([192, 0, 2, 7])
        + bytes([198, 51, 100, 1])
        + b"\xc3\x50"  # 50000
        + b"\x01\xbb"  # 443
    )
    got = v2(("192.0.2.7", 50000), ("198.51.100.1", 443))
    assert got == expected
    assert len(got) == 28


def test_v2_tcp6() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db885a308d313198a2e03707348")
    expected = (
        SIGNATURE
        + b"\x21"  # version 2, command PROXY
        + b"\x21"  # AF_INET6, STREAM
        + b"\x00\x24"  # 36 address bytes follow
        + src
        + dst
        + b"\xff\xff"  # 65535
        + b"\x00\x50"  # 80
    )
    got = v2(("2001:db8::1", 65535), ("2001:db8:85a3:8d3:1319:8a2e:370:7348", 80))
    assert got == expected
    assert len(got) == 52


def test_v2_ipv4_mapped_ipv6_is_folded_to_ipv4() -> None:
    got = v2(("::ffff:10.1.2.3", 1), ("::ffff:10.3.2.1", 2))
    assert got == (
        SIGNATURE + b"\x21\x11\x00\x0c" + bytes([10, 1, 2, 3, 10, 3, 2, 1]) + b"\x00\x01\x00\x02"
    )


def test_v2_link_local_zone_id_is_dropped() -> None:
    got = v2(("fe80::1%eth0", 1), ("fe80::2%eth0", 2))
    fe80 = bytes.fromhex("fe80" + "00" * 12)
    assert got == (
        SIGNATURE
        + b"\x21\x21\x00\x24"
        + fe80
        + b"\x00\x01"
        + fe80
        + b"\x00\x02"
        + b"\x00\x01\x00\x02"
    )


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (None, None),
        (("192.0.2.1", 1), None),
        (("192.0.2.1", 1), ("2001:db8::1", 2)),
        (("", 0), ("192.0.2.1", 2)),
    ],
)
def test_v2_local_when_the_addresses_cannot_be_told(src, dst) -> None:
    # LOCAL (0x20), AF_UNSPEC/UNSPEC (0x00), no address block (length 0).
    got = v2(src, dst)
    assert got == SIGNATURE + b"\x20\x00\x00\x00"
    assert len(got) == 16


@given(src=ipv4s, dst=ipv4s, sport=ports, dport=ports)
def test_v2_tcp4_any_address(src: str, dst: str, sport: int, dport: int) -> None:
    got = v2((src, sport), (dst, dport))
    assert got == (
        SIGNATURE
        + b"\x21\x11\x00\x0c"
        + socket.inet_pton(socket.AF_INET, src)
        + socket.inet_pton(socket.AF_INET, dst)
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
    )


@given(src=ipv6s, dst=ipv6s, sport=ports, dport=ports)
def test_v2_tcp6_any_address(src: str, dst: str, sport: int, dport: int) -> None:
    got = v2((src, sport), (dst, dport))
    assert got == (
        SIGNATURE
        + b"\x21\x21\x00\x24"
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
    )


def test_header_dispatches_on_version() -> None:
    src, dst = ("192.0.2.7", 50000), ("198.51.100.1", 443)
    assert header("v1", src, dst) == b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 443\r\n"
    assert header("v2", src, dst).startswith(SIGNATURE + b"\x21\x11")


# Version 2's TLVs: a terminated connection's TLS (spec 2.2, 2.2.2, 2.2.6) ---------------


def test_v2_tls_without_a_client_certificate_byte_by_byte() -> None:
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", sni="web.example.com")
    addresses = bytes([127, 0, 0, 1, 127, 0, 0, 2]) + (40000).to_bytes(2, "big") + bytes([1, 187])
    authority = b"\x02" + (15).to_bytes(2, "big") + b"web.example.com"
    ssl = (
        b"\x01"  # client: PP2_CLIENT_SSL only
        + (1).to_bytes(4, "big")  # verify: non-zero, no certificate was verified
        + b"\x21" + (7).to_bytes(2, "big") + b"TLSv1.3"
        + b"\x23" + (22).to_bytes(2, "big") + b"TLS_AES_256_GCM_SHA384"
    )  # fmt: skip
    body = addresses + authority + b"\x20" + len(ssl).to_bytes(2, "big") + ssl
    expected = SIGNATURE + b"\x21\x11" + len(body).to_bytes(2, "big") + body
    assert v2(("127.0.0.1", 40000), ("127.0.0.2", 443), tls) == expected
    assert header("v2", ("127.0.0.1", 40000), ("127.0.0.2", 443), tls) == expected


def test_v2_tls_with_a_client_certificate_byte_by_byte() -> None:
    tls = TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", None, "connection", "alice")
    got = v2(("10.0.0.1", 1), ("10.0.0.2", 2), tls)
    ssl = (
        b"\x07"  # PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        + bytes(4)  # verify: 0, the certificate verified
        + b"\x21" + (7).to_bytes(2, "big") + b"TLSv1.2"
        + b"\x22" + (5).to_bytes(2, "big") + b"alice"
        + b"\x23" + (27).to_bytes(2, "big") + b"ECDHE-RSA-AES128-GCM-SHA256"
    )  # fmt: skip
    # No SNI, no AUTHORITY: the addresses, then the SSL TLV alone.
    assert got[16 + 12 :] == b"\x20" + len(ssl).to_bytes(2, "big") + ssl
    assert int.from_bytes(got[14:16], "big") == 12 + 3 + len(ssl)
    # A resumed session: the certificate is the session's, not this connection's.
    resumed = v2(("10.0.0.1", 1), ("10.0.0.2", 2), replace(tls, client_certificate="session"))
    assert resumed[16 + 12 + 3] == 0x05


def test_v2_tls_texts_too_long_are_left_out_and_v1_and_local_carry_no_tlvs() -> None:
    tls = TlsInfo("TLSv1.3", "x" * 256, sni="a" * 256, client_certificate="connection")
    got = v2(("10.0.0.1", 1), ("10.0.0.2", 2), tls)
    # The SSL TLV alone, with the version only: no AUTHORITY, no CN, no cipher.
    assert got[28:] == b"\x20\x00\x0f\x07" + bytes(4) + b"\x21\x00\x07TLSv1.3"
    assert header("v1", ("10.0.0.1", 1), ("10.0.0.2", 2), tls) == v1(
        ("10.0.0.1", 1), ("10.0.0.2", 2)
    )
    assert v2(None, None, tls) == SIGNATURE + b"\x20\x00\x00\x00"


def _walk(data: bytes) -> dict[int, bytes]:
    """TLVs, strictly: each one whole, nothing left over, no type twice."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        assert at + 3 <= len(data), "a TLV's header is cut"
        kind, length = data[at], int.from_bytes(data[at + 1 : at + 3], "big")
        assert at + 3 + length <= len(data), "a TLV's value is cut"
        assert kind not in found
        found[kind] = data[at + 3 : at + 3 + length]
        at += 3 + length
    return found


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)
tls_infos = st.builds(
    TlsInfo,
    version=st.sampled_from(["TLSv1.2", "TLSv1.3"]),
    cipher=st.from_regex(r"[A-Z0-9_-]{1,60}", fullmatch=True),
    sni=st.none() | st.from_regex(r"[a-z0-9.-]{1,253}", fullmatch=True),
    client_certificate=st.sampled_from([None, "connection", "session"]),
    client_cn=st.none() | texts.filter(bool),
)


@given(ipv4s, ipv4s, ports, ports, tls_infos)
def test_v2_tlvs_round_trip_through_an_independent_parser(
    src: str, dst: str, sport: int, dport: int, tls: TlsInfo
) -> None:
    """The proxy-protocol package (not restcp's code) reads back every field; the strict
    walk above finds each TLV whole and nothing else."""
    data = v2((src, sport), (dst, dport), tls)
    assert int.from_bytes(data[14:16], "big") == len(data) - 16
    result = ProxyProtocolV2().unpack(data)
    assert isinstance(result, ProxyResultIPv4)
    assert (str(result.source[0]), result.source[1]) == (src, sport)
    assert (str(result.dest[0]), result.dest[1]) == (dst, dport)
    top = _walk(data[28:])
    assert set(top) == ({0x02, 0x20} if tls.sni else {0x20})
    assert result.tlv.authority == tls.sni
    ssl = result.tlv.ssl
    assert ssl.has_ssl
    assert ssl.has_cert_sess == (tls.client_certificate is not None)
    assert ssl.has_cert_conn == (tls.client_certificate == "connection")
    assert ssl.verified == (tls.client_certificate is not None)
    assert ssl.version == tls.version
    assert ssl.cipher == tls.cipher
    assert ssl.cn == (tls.client_cn if tls.client_certificate else None)
    subs = _walk(top[0x20][5:])
    assert set(subs) == {0x21, 0x23} | (
        {0x22} if tls.client_certificate and tls.client_cn else set()
    )
