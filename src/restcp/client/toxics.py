"""A route's toxics (docs/toxics.md), as the client reaches them: ``route.toxics`` and its
handles, each method a plan run by either client (resources.py has the rest)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from restcp.api.schemas import ToxicOut
from restcp.client.errors import NotFound
from restcp.client.operation import R, Resource, operation
from restcp.client.plan import Plan, Reply, applied, change, request
from restcp.model import Stream, ToxicType

if TYPE_CHECKING:
    from restcp.client.resources import Route


class Toxics(Resource[R]):
    """The toxics of one route, in the order they were added."""

    def __init__(self, transport: R, route: Route[R]) -> None:
        super().__init__(transport)
        self.route = route
        self.path = route.path + "/toxics"

    def __getitem__(self, name: str) -> Toxic[R]:
        """A handle on the toxic ``name``, without asking the API."""
        return Toxic(self._transport, self.route, name)

    def __repr__(self) -> str:
        return f"<Toxics of {self.route!r}>"

    @operation
    def list(self) -> Plan[list[Toxic[R]]]:
        reply = yield from request("GET", self.path)
        return [self._toxic(info) for info in reply.models(ToxicOut)]

    @operation
    def get(self, name: str) -> Plan[Toxic[R]]:
        return (yield from self[name]._read())

    @operation
    def add(
        self,
        /,
        type: ToxicType,
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        clients: Sequence[str] = (),
        **attributes: int,
    ) -> Plan[Toxic[R]]:
        """Add a toxic of ``type`` (its ``attributes`` by keyword: ``latency=200``), named
        ``name`` or ``<type>_<stream>``; it applies at once, to open connections too."""
        toxic, reply = yield from self._add(type, name, stream, toxicity, clients, attributes)
        return applied(reply, toxic)

    @operation
    def update(
        self,
        /,
        name: str,
        *,
        toxicity: float | None = None,
        clients: Sequence[str] | None = None,
        **attributes: int,
    ) -> Plan[Toxic[R]]:
        """Change the toxic ``name``: as ``Toxic.update``."""
        return (yield from self[name]._change(_toxic_changes(toxicity, clients, attributes)))

    @operation
    def remove(self, name: str) -> Plan[None]:
        """Remove the toxic ``name``: connections go on without it."""
        yield from self[name]._remove()

    def _add(
        self,
        /,
        type_: ToxicType,
        name: str | None,
        stream: Stream,
        toxicity: float,
        clients: Sequence[str],
        attributes: dict[str, int],
    ) -> Plan[tuple[Toxic[R], Reply]]:
        body: dict[str, Any] = {
            "type": type_,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
            "clients": list(clients),
        }
        if name is not None:
            body["name"] = name
        reply = yield from change("PUT", self.path, body, ok=201)
        return self._toxic(reply.model(ToxicOut)), reply

    def _toxic(self, info: ToxicOut) -> Toxic[R]:
        return Toxic(self._transport, self.route, info.name, info)


def _toxic_changes(
    toxicity: float | None, clients: Sequence[str] | None, attributes: dict[str, int]
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if toxicity is not None:
        changes["toxicity"] = toxicity
    if clients is not None:
        changes["clients"] = list(clients)
    if attributes:
        changes["attributes"] = attributes
    return changes


class Toxic(Resource[R]):
    """One toxic of a route, by name."""

    def __init__(
        self, transport: R, route: Route[R], name: str, info: ToxicOut | None = None
    ) -> None:
        super().__init__(transport)
        self.route = route
        self.name = name
        self.path = f"{route.path}/toxics/{quote(name, safe='')}"
        self.info = info

    def __repr__(self) -> str:
        what = "" if self.info is None else f" ({self.info.type}, {self.info.stream})"
        return f"<Toxic {self.name!r}{what} of route {self.route.id} of app {self.route.app!r}>"

    @operation
    def refresh(self) -> Plan[Toxic[R]]:
        """Read the toxic again (``info``)."""
        return (yield from self._read())

    @operation
    def update(
        self,
        /,
        *,
        toxicity: float | None = None,
        clients: Sequence[str] | None = None,
        **attributes: int,
    ) -> Plan[Toxic[R]]:
        """Change it, live: the attributes given (the others keep their values), and the
        ``toxicity`` and ``clients`` if given. Its type and stream cannot change."""
        return (yield from self._change(_toxic_changes(toxicity, clients, attributes)))

    @operation
    def remove(self) -> Plan[None]:
        """Remove it: connections go on without it, what it held passed on in order."""
        yield from self._remove()

    def _remove(self) -> Plan[None]:
        reply = yield from change("DELETE", self.path, ok=204)
        return applied(reply, None)

    def _undo(self) -> Plan[None]:
        # The end of a with block. Gone already, or its route: nothing to undo. A removal
        # not applied yet (202) is stored: the serving node applies it when it can.
        with contextlib.suppress(NotFound):
            yield from change("DELETE", self.path, ok=204)

    def _read(self) -> Plan[Toxic[R]]:
        reply = yield from request("GET", self.path)
        self.info = reply.model(ToxicOut)
        return self

    def _change(self, changes: dict[str, Any]) -> Plan[Toxic[R]]:
        reply = yield from change("PATCH", self.path, changes)
        self.info = reply.model(ToxicOut)
        return applied(reply, self)
