"""Toxics, sans-IO: each type's attributes (units, defaults, ranges), their checks, and the
random draws that make a toxic's effect a function of a seed.

A toxic (model.Toxic) is a fault on a route's connections in one direction. This module is
the one definition of what a toxic of each type takes; the API validates against it, the
docs list it (docs/toxics.md), and the data plane reads the values it leaves.

Every attribute is an integer in its unit; ``default`` None means the attribute is
required (a rate of 0 would be a silent stall, a limit of "nothing" means nothing):

    type        attribute        unit   default  range
    latency     latency          ms     0        0 - 3,600,000
                jitter           ms     0        0 - 3,600,000 (held latency +- jitter)
    bandwidth   rate             KB/s   -        1 - 10,000,000 (1 KB = 1000 bytes)
    slow_close  delay            ms     0        0 - 3,600,000
    timeout     timeout          ms     0        0 - 3,600,000 (0: held until removed)
    reset_peer  timeout          ms     0        0 - 3,600,000
    slicer      average_size     bytes  1024     1 - 16,777,216
                size_variation   bytes  0        0 - average_size - 1
                delay            us     0        0 - 60,000,000
    limit_data  bytes            bytes  -        0 - 2**53
    limit_time  time             ms     -        0 - 86,400,000

Determinism: every draw of a connection for a toxic comes from ``draws(seed, route,
connection, toxic)``, a ``random.Random`` seeded with a hash of those four, so the same seed,
route, connection number (the n-th connection the route accepted) and toxic name give the
same toxicity verdict, jitters and slice sizes on any machine and in any run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass

from restcp.model import RouteKey, Stream, Toxic, ToxicType

_MS_MAX = 3_600_000


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute of a toxic type: its unit, default (None: required) and range."""

    unit: str
    default: int | None
    low: int
    high: int
    meaning: str


SPECS: dict[ToxicType, dict[str, Attribute]] = {
    "latency": {
        "latency": Attribute("ms", 0, 0, _MS_MAX, "each chunk is held this long from its read"),
        "jitter": Attribute("ms", 0, 0, _MS_MAX, "plus or minus up to this, drawn per chunk"),
    },
    "bandwidth": {
        "rate": Attribute("KB/s", None, 1, 10_000_000, "bytes pass at this rate (1 KB = 1000 B)"),
    },
    "slow_close": {
        "delay": Attribute("ms", 0, 0, _MS_MAX, "the FIN (or close) is passed on this late"),
    },
    "timeout": {
        "timeout": Attribute(
            "ms", 0, 0, _MS_MAX, "data is held; the connection closes after this (0: never)"
        ),
    },
    "reset_peer": {
        "timeout": Attribute("ms", 0, 0, _MS_MAX, "the connection is reset after this"),
    },
    "slicer": {
        "average_size": Attribute("bytes", 1024, 1, 1 << 24, "pieces of about this size"),
        "size_variation": Attribute(
            "bytes", 0, 0, (1 << 24) - 1, "plus or minus up to this (less than average_size)"
        ),
        "delay": Attribute("us", 0, 0, 60_000_000, "between pieces"),
    },
    "limit_data": {
        "bytes": Attribute("bytes", None, 0, 1 << 53, "this many bytes pass, then it closes"),
    },
    "limit_time": {
        "time": Attribute("ms", None, 0, 86_400_000, "data flows; it closes after this"),
    },
}

STREAMS: tuple[Stream, ...] = ("upstream", "downstream")
NAME_MAX = 64


class ToxicError(ValueError):
    """A toxic that cannot be: ``field`` names what is wrong (``attributes.rate``, ``type``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def default_name(type_: ToxicType, stream: Stream) -> str:
    """toxiproxy's default: ``<type>_<stream>``."""
    return f"{type_}_{stream}"


NAME_RULE = f"1 to {NAME_MAX} of A-Z a-z 0-9 _ - . (a path segment), not . or .."
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def check_name(name: str) -> str:
    """A name is a segment of the toxic's URL, which it must be as it is: ASCII (nothing to
    percent-encode), and not one of the dot segments URL resolution removes."""
    if not 1 <= len(name) <= NAME_MAX or not _NAME_CHARS.issuperset(name) or name in (".", ".."):
        raise ToxicError("name", NAME_RULE)
    return name


def attributes(
    type_: str, given: Mapping[str, object], current: Mapping[str, int] | None = None
) -> tuple[tuple[str, int], ...]:
    """Every attribute of ``type_``, sorted: ``given`` over ``current`` (a PATCH merges) over
    the defaults. ToxicError naming the field for an unknown type or attribute, a value that
    is not an integer, one out of its range, or a required one missing."""
    spec = SPECS.get(type_)  # type: ignore[call-overload]
    if spec is None:
        raise ToxicError("type", f"unknown toxic type {type_!r}; one of {', '.join(SPECS)}")
    values: dict[str, int] = {}
    for key in given:
        if key not in spec:
            raise ToxicError(
                f"attributes.{key}", f"{type_} has no attribute {key!r}; it has {', '.join(spec)}"
            )
    for key, attribute in spec.items():
        raw = given.get(key, (current or {}).get(key, attribute.default))
        if raw is None:
            raise ToxicError(f"attributes.{key}", f"required ({attribute.meaning})")
        # JSON has one number type: 200.0 is 200, 200.5 and true are not integers.
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ToxicError(f"attributes.{key}", f"must be an integer ({attribute.unit})")
        if not attribute.low <= raw <= attribute.high:
            raise ToxicError(
                f"attributes.{key}",
                f"must be {attribute.low} to {attribute.high} ({attribute.unit})",
            )
        values[key] = raw
    if type_ == "slicer" and values["size_variation"] >= values["average_size"]:
        raise ToxicError("attributes.size_variation", "must be less than average_size")
    return tuple(sorted(values.items()))


def check_toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ToxicError("toxicity", "must be a number from 0 to 1")
    return float(value)


def check_clients(values: object) -> tuple[str, ...]:
    """CIDR networks in canonical form (an address alone is its /32 or /128)."""
    if not isinstance(values, list | tuple):
        raise ToxicError("clients", "must be a list of CIDR networks")
    networks: list[str] = []
    for i, value in enumerate(values):
        try:
            if not isinstance(value, str):
                raise ValueError
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ToxicError(f"clients.{i}", f"not a CIDR network: {value!r}") from None
    return tuple(networks)


def affects(toxic: Toxic, client_ip: str | None) -> bool:
    """Whether a connection from ``client_ip`` is one the toxic is aimed at (its toxicity
    is drawn apart, by ``meets``)."""
    if not toxic.clients:
        return True
    if client_ip is None:
        return False
    address = ipaddress.ip_address(client_ip)
    mapped = getattr(address, "ipv4_mapped", None)
    for text in toxic.clients:
        network = ipaddress.ip_network(text)
        if address in network or (mapped is not None and mapped in network):
            return True
    return False


def draws(seed: int, route: RouteKey, connection: int, toxic: str) -> random.Random:
    """The random draws of one connection for one toxic, a function of the four only."""
    material = f"{seed}\0{route[0]}\0{route[1]}\0{connection}\0{toxic}".encode()
    digest = hashlib.blake2b(material, digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))


def meets(toxic: Toxic, rng: random.Random) -> bool:
    """The toxicity verdict: the first draw of the connection's ``rng`` for this toxic."""
    return rng.random() < toxic.toxicity
