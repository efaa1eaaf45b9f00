"""Test certificates, made when a test asks (no key is ever checked in): a CA, and leaves it
signs for the names a test needs, as PEM text and as files for openssl and curl."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    cert: str  # the leaf, then the chain above it (not the root)
    key: str
    common_name: str

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_text(self.cert)
        key.write_text(self.key)
        key.chmod(0o600)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Authority:
    """A CA that signs leaves for servers and clients."""

    def __init__(self, common_name: str = "restcp test CA") -> None:
        self.key = _key()
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def write(self, directory: Path, stem: str = "ca") -> Path:
        path = directory / f"{stem}.crt"
        path.write_text(self.pem)
        return path

    def issue(
        self,
        common_name: str,
        names: tuple[str, ...] | None = None,
        *,
        client: bool = False,
        days: float = 30,
        san: bool = True,
    ) -> Pem:
        """A leaf for ``names`` (default: the common name): DNS names, or IP literals."""
        key = _key()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if san:
            general: list[x509.GeneralName] = []
            for name in names or (common_name,):
                try:
                    general.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    general.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        leaf = builder.sign(self.key, hashes.SHA256())
        return Pem(
            leaf.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), common_name
        )


def other_key() -> str:
    """A private key no certificate here was made for."""
    return _key_pem(_key())


def encrypted(key_pem: str, password: bytes = b"secret") -> str:
    """``key_pem`` under a passphrase."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ).decode()
