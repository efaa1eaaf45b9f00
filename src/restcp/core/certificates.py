"""A certificate and its key, judged before they are stored (docs/tls.md): pure functions
over PEM text, on the ``cryptography`` package.

A certificate is accepted when its chain parses (the leaf first, each next one the issuer
of the one before), its key parses without a password and is the leaf's own (their public
keys are equal), and the leaf has not expired. Its names are read from the leaf: the DNS
names and IP addresses of its subjectAltName, or, without one, its subject's commonName.
Every refusal is a ``CertificateError`` whose text says what to fix; a certificate found
wanting changes nothing (the API answers 422).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID


class CertificateError(ValueError):
    """Why a certificate, its key, or a CA bundle is refused: ``field`` is the body's field
    at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the leaf of a valid certificate says of itself."""

    names: tuple[str, ...]  # DNS names (lower case) and IP addresses, as the leaf lists them
    subject: str  # RFC 4514
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str  # of the leaf's DER, hex
    chain: int  # certificates in the chain, the leaf included


def inspect(cert_pem: str, key_pem: str, now: datetime | None = None) -> CertificateInfo:
    """The leaf's facts, once the chain, the key and their match are checked;
    CertificateError otherwise."""
    chain = load_chain(cert_pem, "cert")
    leaf = chain[0]
    for number, (child, parent) in enumerate(itertools.pairwise(chain), 2):
        if child.issuer != parent.subject:
            raise CertificateError(
                "cert",
                f"certificate {number} of the chain "
                f"({parent.subject.rfc4514_string()}) did not issue the one before it "
                f"(issued by {child.issuer.rfc4514_string()}): put the leaf first, then "
                "each issuer in turn",
            )
    key = _load_key(key_pem)
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise CertificateError(
            "key", "the private key does not match the certificate (the first one of cert)"
        )
    now = now or datetime.now(UTC)
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        raise CertificateError("cert", f"the certificate expired on {_iso(not_after)}")
    return _describe(chain)


def describe(cert_pem: str) -> CertificateInfo:
    """What the leaf of a stored (so once valid) chain says of itself."""
    return _describe(load_chain(cert_pem, "cert"))


def _describe(chain: list[x509.Certificate]) -> CertificateInfo:
    leaf = chain[0]
    return CertificateInfo(
        names=names_of(leaf),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=hashlib.sha256(
            leaf.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
        chain=len(chain),
    )


def load_chain(pem: str, field: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order; CertificateError naming ``field`` if
    there is none or one does not parse."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise CertificateError(field, "no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError as err:
        raise CertificateError(field, f"a certificate does not parse: {err}") from None


def check_ca_bundle(pem: str, field: str = "client_ca") -> int:
    """How many certificates a CA bundle holds; CertificateError if it holds none or one
    does not parse."""
    return len(load_chain(pem, field))


def names_of(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _load_key(pem: str) -> PrivateKeyTypes:
    if "PRIVATE KEY-----" not in pem:
        raise CertificateError("key", "no PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise CertificateError(
            "key", "the private key is encrypted: store it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CertificateError("key", f"the private key does not parse: {err}") from None


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
