"""proxy/origination.py without sockets: the server name each backend is asked for, the
context's verification, and the label of a failed handshake."""

from __future__ import annotations

import ssl

import pytest

from restcp.model import BackendTls, RouteSettings, TlsSettings
from restcp.proxy.origination import (
    BACKEND_FAILURE_REASONS,
    Origination,
    backend_failure_reason,
)


@pytest.mark.parametrize(
    ("settings", "host", "expected"),
    [
        (BackendTls(), "db.example.com", "db.example.com"),  # the host name
        (BackendTls(), "10.0.0.7", "10.0.0.7"),  # checked against the IP SAN, no SNI
        (BackendTls(server_name="db.internal"), "10.0.0.7", "db.internal"),
        (BackendTls(verify=False), "10.0.0.7", None),  # nothing to check, no SNI
        (BackendTls(verify=False), "db.example.com", "db.example.com"),  # still the SNI
    ],
)
def test_server_hostname(settings: BackendTls, host: str, expected: str | None) -> None:
    assert Origination(settings, ()).server_hostname(host) == expected


def test_verification_is_on_unless_turned_off() -> None:
    verified = Origination(BackendTls(), ()).context
    assert verified.verify_mode == ssl.CERT_REQUIRED
    assert verified.check_hostname
    assert verified.minimum_version == ssl.TLSVersion.TLSv1_2
    trusting = Origination(BackendTls(verify=False), ()).context
    assert trusting.verify_mode == ssl.CERT_NONE
    assert not trusting.check_hostname


def test_failure_reasons_are_bounded() -> None:
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert backend_failure_reason(refused) == "certificate_refused"
    for err in (ssl.SSLEOFError(), ConnectionResetError(), ssl.SSLError(1, "x"), OSError()):
        assert backend_failure_reason(err) in BACKEND_FAILURE_REASONS


def test_certificate_names_put_the_client_certificate_last_once() -> None:
    assert RouteSettings().certificate_names() == ()
    assert RouteSettings(backend_tls=BackendTls(certificate="c")).certificate_names() == ("c",)
    both = RouteSettings(
        tls=TlsSettings(certificates=("a", "c")), backend_tls=BackendTls(certificate="c")
    )
    assert both.certificate_names() == ("a", "c")
    other = RouteSettings(
        tls=TlsSettings(certificates=("a",)), backend_tls=BackendTls(certificate="b")
    )
    assert other.certificate_names() == ("a", "b")
