"""TLS towards a route's backends (docs/tls.md): the client context, and the name each
backend is asked for and checked against.

A route with ``backend_tls`` is served with an ``Origination`` built from the route as
stored, the client certificate it names included: one SSL context for all its backends.
The Connector passes it to ``create_connection`` with the backend's server name, so the
connect is done only once the handshake is (the Connection's connect deadline covers
both); a handshake that fails is a failed connect of that backend, as a refused one is:
the next backend is tried, and the backend's failures count towards its passive health.
Health probes of the route handshake the same way.

Once connected, the backend's transport is an SSL transport, so the bytes go through the
TransportPipe (or a StagedPipe for toxics), never a SplicePipe: the runtime turns splice
off for such routes. TLS over asyncio has no half-close: a client's FIN ends the backend's
session (close_notify, then the FIN; proxy.tls.HalfCloseless), and a backend's
close_notify ends the connection once the client has been sent what came before it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

from restcp.model import BackendTls, Certificate, is_host_name
from restcp.proxy.tls import FAILURE_REASONS, failure_reason, load_chain

log = logging.getLogger("restcp.proxy")

# The labels a failed handshake with a backend is counted under: the backend's certificate
# refused (by ``ca`` or ``server_name``), or the termination's reasons, seen from the
# other side ("certificate_refused_by_client" there is a backend refusing ours here).
BACKEND_FAILURE_REASONS = ("certificate_refused", *FAILURE_REASONS)


def backend_failure_reason(err: BaseException) -> str:
    """The label of a failed handshake with a backend."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return "certificate_refused"
    return failure_reason(err)


class Origination:
    """A route's TLS towards its backends, as served: the context every connect and probe
    handshakes with, and the server name of each backend."""

    __slots__ = ("context", "server_name", "verify")

    def __init__(self, settings: BackendTls, certificates: Sequence[Certificate]) -> None:
        self.verify = settings.verify
        self.server_name = settings.server_name
        if settings.verify:
            # cadata None: the system's CA store (what the OpenSSL build trusts by default).
            context = ssl.create_default_context(cadata=settings.ca)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.certificate is not None:
            chosen = [c for c in certificates if c.name == settings.certificate]
            if chosen:
                try:
                    load_chain(context, chosen[0])
                except ssl.SSLError as err:
                    # Judged when stored; one OpenSSL refuses all the same is not shown.
                    log.error("certificate %r cannot be shown to backends: %s", chosen[0].name, err)
            else:
                # Removed meanwhile (by a node that did not see this route yet).
                log.error("certificate %r is not stored: backends get none", settings.certificate)
        self.context = context

    def server_hostname(self, host: str) -> str | None:
        """What ``create_connection`` is given for a backend at ``host``: the route's
        ``server_name``, else the host itself. A DNS name is sent as SNI and checked; an IP
        literal is checked against the certificate's IP addresses (no SNI is sent for it);
        without verification, an IP literal is not given at all."""
        if self.server_name is not None:
            return self.server_name
        if self.verify or is_host_name(host):
            return host
        return None
