"""TLS termination of a route's clients (docs/tls.md): its contexts, the certificate each
client gets, and the handshake.

A route with ``tls`` is served by a ``Termination`` built from the route as stored, its
certificates included (the route service reads them with the route): one SSL context per
certificate, all alike but for it. The listener hands each accepted socket to the loop's
``connect_accepted_socket`` with the first certificate's context and the route's handshake
timeout; the SNI callback moves the handshake to the context of the certificate whose names
match the server name the client sent (the exact name, else a wildcard of its parent
domain, else the first certificate). The Connection is made only once the handshake is done
(``connection_made`` comes then), and relays the plain bytes with the TransportPipe as for
any route; a handshake that fails (or times out) is counted by reason on the route and
never becomes a Connection.

A replaced certificate changes the route, so the runtime builds a new Termination: new
handshakes use it, and open connections keep the SSL objects they were made with.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from restcp.core.certificates import CertificateError, describe
from restcp.core.proxy_protocol import TlsInfo
from restcp.model import Certificate, TlsSettings
from restcp.proxy.stepping import Stepper

log = logging.getLogger("restcp.proxy")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL's reasons, by the label a handshake failure is counted under (a bounded set:
# every other reason is "other"; the log line at debug has the reason itself).
_REASONS = {
    "version": (
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "WRONG_SSL_VERSION",
        "VERSION_TOO_LOW",
        "NO_PROTOCOLS_AVAILABLE",
    ),
    "not_tls": ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"),
    "no_shared_cipher": ("NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE"),
    "no_client_certificate": (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    ),
    "client_certificate_refused": ("CERTIFICATE_VERIFY_FAILED",),
    "certificate_refused_by_client": (
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_DECRYPT_ERROR",
    ),
    "no_application_protocol": ("NO_APPLICATION_PROTOCOL", "TLSV1_ALERT_NO_APPLICATION_PROTOCOL"),
    "no_certificate": ("NO_CERTIFICATE_SET", "NO_CERTIFICATE_ASSIGNED"),
}
_LABELS = {reason: label for label, reasons in _REASONS.items() for reason in reasons}
# Every label a failure may be counted under: the metric's label values.
FAILURE_REASONS = (*_REASONS, "timeout", "reset", "eof", "other")


def failure_reason(err: BaseException) -> str:
    """The label of a failed handshake, from what the loop raised."""
    # Both loops abort a handshake past its timeout with this error and sentence.
    if isinstance(err, TimeoutError) or (
        isinstance(err, ConnectionAbortedError) and "taking longer" in str(err)
    ):
        return "timeout"
    if isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionAbortedError):
        return "eof"
    if isinstance(err, ssl.SSLError):
        # An SSLError made by the loop, not OpenSSL, has no reason.
        return _LABELS.get(str(getattr(err, "reason", None)), "other")
    if isinstance(err, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(err, ConnectionError | EOFError):
        return "eof"
    return "other"


class Termination:
    """A route's TLS, as served: the context a handshake starts with (``context``), the one
    per certificate the SNI callback moves it to, and the handshake timeout."""

    __slots__ = ("_exact", "_wildcard", "context", "handshake_timeout")

    def __init__(self, settings: TlsSettings, certificates: Sequence[Certificate]) -> None:
        self.handshake_timeout = settings.handshake_timeout
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        contexts: list[ssl.SSLContext] = []
        for certificate in certificates:
            try:
                context = self._context(settings, certificate)
                names = describe(certificate.cert).names
            except (ssl.SSLError, CertificateError) as err:
                # Judged when stored; one that OpenSSL refuses all the same is skipped.
                log.error("certificate %r cannot be served: %s", certificate.name, err)
                continue
            contexts.append(context)
            for name in names:
                table = self._wildcard if name.startswith("*.") else self._exact
                table.setdefault(name.removeprefix("*."), context)
        # No certificate to be had (all removed): handshakes fail, counted "no_certificate".
        self.context = contexts[0] if contexts else self._context(settings, None)

    def _context(self, settings: TlsSettings, certificate: Certificate | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[settings.min_version]
        if certificate is not None:
            load_chain(context, certificate)
        if settings.alpn:
            context.set_alpn_protocols(list(settings.alpn))
        if settings.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=settings.client_ca)
        context.sni_callback = self._pick
        return context

    def _pick(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        """OpenSSL's SNI callback: the certificate for ``server_name``; the name is kept on
        the SSL object for the access line."""
        if server_name is None:
            return
        ssl_object.restcp_sni = server_name
        name = server_name.lower().rstrip(".")
        chosen = self._exact.get(name)
        if chosen is None:
            _, _, parent = name.partition(".")
            chosen = self._wildcard.get(parent)
        if chosen is not None and chosen is not context:
            ssl_object.context = chosen


def load_chain(context: ssl.SSLContext, certificate: Certificate) -> None:
    """OpenSSL reads a chain and key from files only: they are written to a directory only
    this process's user can enter, and removed as soon as they are read."""
    with tempfile.TemporaryDirectory(prefix="restcp-tls-") as directory:
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert.write_text(certificate.cert)
        key.touch(mode=0o600)
        key.write_text(certificate.key)
        context.load_cert_chain(cert, key)


def describe_session(transport: asyncio.BaseTransport) -> tuple[str, str, str | None]:
    """(version, cipher, SNI) of a terminated connection's transport."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return ("-", "-", None)
    cipher = ssl_object.cipher()
    sni: str | None = getattr(ssl_object, "restcp_sni", None)
    if sni is not None:
        # The client's own text, bound for a log line: nothing that could split or fake one.
        sni = "".join(c if c.isprintable() and not c.isspace() else "?" for c in sni[:255])
    return (ssl_object.version() or "-", cipher[0] if cipher else "-", sni)


def session_info(ssl_object: ssl.SSLObject) -> TlsInfo:
    """What a terminated connection's handshake said, for a PROXY v2 header's TLVs: the
    SNI exactly as sent, and the client certificate's common name (mTLS: a certificate
    the client presents has verified, or the handshake failed)."""
    cipher = ssl_object.cipher()
    peer = ssl_object.getpeercert() if ssl_object.context.verify_mode != ssl.CERT_NONE else None
    certificate: Literal["connection", "session"] | None = None
    cn: str | None = None
    if peer:
        certificate = "session" if ssl_object.session_reused else "connection"
        subject = cast(tuple[tuple[tuple[str, str], ...], ...], peer.get("subject", ()))
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    cn = value
    return TlsInfo(
        version=ssl_object.version() or "-",
        cipher=cipher[0] if cipher else "-",
        sni=getattr(ssl_object, "restcp_sni", None),
        client_certificate=certificate,
        client_cn=cn,
    )


class Handshake(Stepper):
    """Runs one client's ``connect_accepted_socket`` with TLS: a failure is counted on its
    route under its reason (``failures``); a success is the Connection's from
    ``connection_made`` on. The client's place under the route's limits, taken at accept,
    is given back (``release``) once: when its Connection is made (``done``, which then is
    judged as any other), or when the handshake fails."""

    __slots__ = ("_failures", "_release")

    def __init__(self, failures: Counter[str], release: Callable[[], None]) -> None:
        super().__init__()
        self._failures = failures
        self._release: Callable[[], None] | None = release

    def done(self) -> None:
        """The handshake is over: the client's place is given back (once)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def finished(self, err: BaseException | None) -> None:
        self.done()
        if err is None or isinstance(err, asyncio.CancelledError):
            return
        reason = failure_reason(err)
        self._failures[reason] += 1
        log.debug("TLS handshake failed (%s): %r", reason, err)


class HalfCloseless:
    """A TLS transport as the pipes use it. TLS over asyncio has no half-close
    (``write_eof`` raises): a FIN from the backend closes the client's session instead,
    once what is buffered is sent (close_notify, then the FIN). Everything else is the
    transport's."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def write_eof(self) -> None:
        self._transport.close()

    def can_write_eof(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
