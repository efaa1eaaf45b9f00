"""The server name a TLS client asks for, read from the first bytes it sends: sans-IO.

A port shared by several routes (SNI routing, docs/tls.md) must choose one before anything
answers the client, so the proxy reads what the client sends first, its ClientHello, and
hands the bytes read here to ``peek`` each time more arrive, until it says what they are:

    "more"       an incomplete ClientHello: read more (under the read timeout)
    "hello"      a whole ClientHello; ``name`` is its server_name (None: it sent none)
    "not_tls"    the first byte is not a TLS handshake record (plain text, SSLv2...)
    "malformed"  a handshake record, but not a ClientHello that parses
    "too_big"    ``limit`` bytes read and the ClientHello still incomplete

Nothing is consumed: the caller relays every byte it read, unchanged, to the backend it
picks. The ClientHello may come in any number of TCP segments and TLS records (RFC 8446
5.1: a handshake message may be fragmented over records), so records are joined before
the message is read. The name is returned as sent (an IDNA name in its ``xn--`` form),
in lower case, without a trailing dot; a name that is not ASCII is ``malformed``.

    record:      type(1)=22  version(2)  length(2)  fragment
    handshake:   type(1)=1   length(3)   ClientHello
    ClientHello: version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
                 compression_methods<1..2^8-1> extensions<0..2^16-1>
    server_name (extension 0): list<2>: name_type(1)=0 host_name<2>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

HANDSHAKE: Final = 22
CLIENT_HELLO: Final = 1
SERVER_NAME: Final = 0
HOST_NAME: Final = 0
RECORD_HEADER: Final = 5
# A TLSPlaintext fragment is at most 2^14 bytes (RFC 8446 5.1).
MAX_FRAGMENT: Final = 1 << 14
# What a proxy reads at most before it gives up: a ClientHello with a post-quantum key
# share is about 1.8 KB; 16 KiB leaves room for large session tickets and PSKs.
DEFAULT_LIMIT: Final = 16 * 1024

Outcome = Literal["more", "hello", "not_tls", "malformed", "too_big"]


@dataclass(frozen=True, slots=True)
class Peek:
    """What the bytes read so far are (see the module); ``name`` only with "hello"."""

    outcome: Outcome
    name: str | None = None


MORE: Final = Peek("more")
NOT_TLS: Final = Peek("not_tls")
MALFORMED: Final = Peek("malformed")
TOO_BIG: Final = Peek("too_big")


def peek(data: bytes | bytearray | memoryview, limit: int = DEFAULT_LIMIT) -> Peek:
    """What ``data``, every byte the client sent so far, is (see the module)."""
    view = memoryview(data)
    if not view:
        return MORE
    if view[0] != HANDSHAKE:
        return NOT_TLS
    message = bytearray()
    at = 0
    # Join the fragments of handshake records until the first message is whole.
    while True:
        if len(view) - at < RECORD_HEADER:
            return _incomplete(len(view), limit)
        if view[at] != HANDSHAKE:
            # Another record type before the ClientHello was whole (an alert, data).
            return MALFORMED
        if view[at + 1] != 3:  # TLS's major version: SSL 3.0 to TLS 1.3 all send 3
            return MALFORMED
        length = (view[at + 3] << 8) | view[at + 4]
        if length == 0 or length > MAX_FRAGMENT:
            return MALFORMED
        fragment = view[at + RECORD_HEADER : at + RECORD_HEADER + length]
        message += fragment
        if len(message) >= 4:
            if message[0] != CLIENT_HELLO:
                return MALFORMED
            needed = 4 + ((message[1] << 16) | (message[2] << 8) | message[3])
            if len(message) >= needed:
                return _client_hello(memoryview(message)[4:needed])
            if needed > limit:
                return TOO_BIG
        if len(fragment) < length:
            return _incomplete(len(view), limit)
        at += RECORD_HEADER + length


def _incomplete(read: int, limit: int) -> Peek:
    return TOO_BIG if read >= limit else MORE


class _Malformed(Exception):
    pass


class _Reader:
    """Reads a ClientHello's fields; _Malformed past its end."""

    __slots__ = ("at", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.at = 0

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.view):
            raise _Malformed
        part = self.view[self.at : self.at + n]
        self.at += n
        return part

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> memoryview:
        """A length-prefixed field (the length ``size`` bytes)."""
        return self.take(self.number(size))

    @property
    def left(self) -> int:
        return len(self.view) - self.at


def _client_hello(body: memoryview) -> Peek:
    reader = _Reader(body)
    try:
        reader.take(2 + 32)  # legacy_version, random
        if len(reader.vector(1)) > 32:  # legacy_session_id
            return MALFORMED
        suites = reader.vector(2)
        if not suites or len(suites) % 2:
            return MALFORMED
        if not reader.vector(1):  # legacy_compression_methods
            return MALFORMED
        if reader.left == 0:  # no extensions at all (SSL 3.0, old clients)
            return Peek("hello")
        extensions = _Reader(reader.vector(2))
        if reader.left:
            return MALFORMED
        while extensions.left:
            kind = extensions.number(2)
            data = extensions.vector(2)
            if kind == SERVER_NAME:
                return _server_name(_Reader(data))
    except _Malformed:
        return MALFORMED
    return Peek("hello")


def _server_name(reader: _Reader) -> Peek:
    names = _Reader(reader.vector(2))
    if reader.left:
        raise _Malformed
    while names.left:
        kind = names.number(1)
        name = names.vector(2)
        if kind != HOST_NAME:
            continue
        try:
            text = bytes(name).decode("ascii")
        except UnicodeDecodeError:
            return MALFORMED
        text = text.lower().removesuffix(".")
        return Peek("hello", text) if text else MALFORMED
    return Peek("hello")
