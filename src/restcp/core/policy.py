"""Where backends may point: the guard that keeps restcp from being an open relay.

Deny wins over allow. An address is denied in every spelling that may reach the same host:
an IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:169.254.169.254``,
IPv4-compatible ``::a9fe:a9fe``, NAT64 ``64:ff9b::a9fe:a9fe``, IPv4-translated
``::ffff:0:a9fe:a9fe``) is denied if the IPv4 address is. The allow list is stricter: only
the address a connection really goes to counts (itself, or the IPv4 address of an
IPv4-mapped one, which the kernel connects to directly), since the other embeddings are
IPv6 destinations whose fate a tunnel or translator decides. A deny or allow network written
IPv4-mapped (``::ffff:10.0.0.0/104``) covers the IPv4 addresses it names. The node's own API
and listener addresses are denied too, so a route can never relay into restcp itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY: Final = (
    "169.254.0.0/16",  # link-local, where cloud metadata services live (169.254.169.254)
    "fd00:ec2::254/128",  # AWS's IPv6 metadata address
    "fe80::/10",  # IPv6 link-local
    "0.0.0.0/8",  # "this network": 0.0.0.0 connects to the local host
    "::/128",  # unspecified
    "224.0.0.0/4",  # multicast
    "ff00::/8",
    "255.255.255.255/32",  # broadcast
)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses); ValueError with the offending text otherwise."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP network (CIDR) or address") from None
    return tuple(networks)


_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
# IPv6 prefixes whose last 32 bits name an IPv4 host that a connection may end up at,
# through the kernel, a tunnel or a NAT64/SIIT translator.
_EMBEDDING: Final = (
    _MAPPED,
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 2765)
)


def spellings(address: Address) -> list[Address]:
    """The address and the IPv4 address it embeds, if any."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        value = int(address)
        if any(address in prefix for prefix in _EMBEDDING) or (
            value >> 32 == 0 and value > 1  # IPv4-compatible, ::a.b.c.d (not :: nor ::1)
        ):
            found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def _destinations(address: Address) -> list[Address]:
    """The forms that are the host a connection goes to: what an allow list must cover."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return [address, address.ipv4_mapped]
    return [address]


def _covers(network: Network, address: Address) -> bool:
    if network.version == address.version:
        return address in network
    # A network written IPv4-mapped names IPv4 addresses; "::/0" is IPv6 only.
    return (
        isinstance(network, ipaddress.IPv6Network)
        and network.subnet_of(_MAPPED)
        and ipaddress.IPv6Address(int(_MAPPED.network_address) | int(address)) in network
    )


@dataclass(frozen=True)
class AddressPolicy:
    allow: tuple[Network, ...] = ()  # empty: everything not denied
    deny: tuple[Network, ...] = field(default_factory=lambda: parse_networks(DEFAULT_DENY))

    def refusal(self, ip: str, port: int, own: Collection[tuple[str, int]] = ()) -> str | None:
        """Why ``ip:port`` may not be a backend (None: it may). ``own`` lists the node's own
        API and listener addresses; a listener on 0.0.0.0 or :: owns its port on every
        address."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
        forms = spellings(address)
        for form in forms:
            for network in self.deny:
                if _covers(network, form):
                    return f"{ip} is in the denied network {network}"
        if self.allow and not any(
            _covers(network, form) for form in _destinations(address) for network in self.allow
        ):
            return f"{ip} is not in an allowed network"
        for own_ip, own_port in own:
            if own_port != port:
                continue
            own_address = ipaddress.ip_address(own_ip)
            # Compared in every spelling both ways: a listener on ::ffff:127.0.0.1 is
            # reached at 127.0.0.1 too.
            if own_address.is_unspecified or any(f in forms for f in spellings(own_address)):
                return f"{ip}:{port} is this node's own API or listener"
        return None
