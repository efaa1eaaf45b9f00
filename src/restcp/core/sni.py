"""Server names as routes claim them on a shared port, and the route a name goes to.

A route on a shared port names the server names it takes (its ``sni``, docs/tls.md):

    "db1.example.com"         that name exactly
    "*.staging.example.com"   every name ending in ".staging.example.com", at any depth
    "*"                       the port's default: no name, an unknown one, not TLS

A client's name goes to the route of that exact name, else to the route of the longest
wildcard suffix that matches, else to the default, else nowhere (it is closed). Names are
compared in lower case, as sent (an IDNA name in its ``xn--`` form: restcp converts
nothing). A lookup costs a dict look-up per label of the name, whatever the number of
routes on the port: exact names in one dict, wildcards in another by their suffix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT: Final = "*"  # model.canonical_server_name makes the patterns


def clashes(claims: Iterable[tuple[T, Iterable[str]]]) -> list[tuple[str, T, T]]:
    """Each pattern claimed twice among ``claims`` (owner, its canonical patterns): the
    pattern, its first owner, and the other one."""
    seen: dict[str, T] = {}
    found: list[tuple[str, T, T]] = []
    for owner, patterns in claims:
        for pattern in patterns:
            first = seen.setdefault(pattern, owner)
            if first != owner:
                found.append((pattern, first, owner))
    return found


class SniTable(Generic[T]):
    """Where each server name of a shared port goes (see the module): built whole from
    the port's routes, read for each new client."""

    __slots__ = ("default", "exact", "wildcards")

    def __init__(self, claims: Iterable[tuple[T, Iterable[str]]] = ()) -> None:
        self.exact: dict[str, T] = {}
        # "*.example.com" as ".example.com": a name's suffixes are looked up as they are.
        self.wildcards: dict[str, T] = {}
        self.default: T | None = None
        for owner, patterns in claims:
            for pattern in patterns:
                # Two claims of one pattern are refused before they are stored; if a store
                # holds them anyway (written around the API), the first claim keeps it.
                if pattern == DEFAULT:
                    if self.default is None:
                        self.default = owner
                elif pattern.startswith("*."):
                    self.wildcards.setdefault(pattern[1:], owner)
                else:
                    self.exact.setdefault(pattern, owner)

    def lookup(self, name: str | None) -> T | None:
        """The owner ``name`` (canonical: lower case, no trailing dot) goes to; None: no
        route takes it. ``name`` None: the client sent none, or is not TLS."""
        if name is None:
            return self.default
        found = self.exact.get(name)
        if found is not None:
            return found
        wildcards = self.wildcards
        if wildcards:
            dot = name.find(".")
            while dot >= 0:
                found = wildcards.get(name[dot:])
                if found is not None:
                    return found
                dot = name.find(".", dot + 1)
        return self.default
