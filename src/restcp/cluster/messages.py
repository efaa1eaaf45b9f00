"""What nodes say to each other, as typed values with one codec each.

The wire is the seed README's, unchanged (docs/cluster.md, "Channels and messages")::

    provision:<ip>                   Changed           <app>:<route>           (a notice)
    provision:<ip>                   ProvisionRequest  {"app": …, "route": …}  (JSON)
    provision-success:<app>:<route>  Provisioned       <port>
                                     Refused           error <status> <detail>

Both kinds on ``provision:<ip>`` share the channel, so anyone listening to it sees the
``<app>:<route>`` notices it always saw; ``decode_notice`` is the one place that tells them
apart. Errors cross as a RemoteError: the exception class the asking node raises again, and
its sentence. A text that does not decode raises Malformed, never anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from restcp.errors import (
    Conflict,
    Forbidden,
    InvalidSpec,
    NotFound,
    RestcpError,
    Unavailable,
)
from restcp.model import RouteKey, RouteSettings
from restcp.store.codec import dump_route_settings, load_route_settings

# Channel names, before the store's prefix. The seed README's names.
PROVISION: Final = "provision:"
REPLY: Final = "provision-success:"


class Malformed(ValueError):
    """A message that no codec here reads; ``str(err)`` says why."""


def provision_channel(ip: str) -> str:
    """Where the node holding ``ip`` listens: notices and provisioning requests."""
    return PROVISION + ip


def reply_channel(key: RouteKey) -> str:
    """Where the answer to the provisioning of route ``key`` comes."""
    return REPLY + _member(key)


def _member(key: RouteKey) -> str:
    """``<app>:<route>``, the app percent-encoded as in the store's keys, so that no app id
    contains the ``:`` before the route id, nor starts a notice with ``{``."""
    return f"{quote(key[0], safe='')}:{key[1]}"


@dataclass(frozen=True, slots=True)
class Changed:
    """Route ``key`` changed in the store (or was deleted): its node applies it again."""

    key: RouteKey

    def encode(self) -> str:
        return _member(self.key)

    @classmethod
    def decode(cls, text: str) -> Changed:
        app, sep, route_id = text.rpartition(":")
        if not sep or not (route_id.isascii() and route_id.isdigit()):
            raise Malformed("not <app>:<route>")
        return cls((unquote(app), int(route_id)))


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """Bind and store route ``route_id`` of ``app`` on the IP of the channel, on ``port``
    (None: the next free one), under an id the asking node reserved."""

    app: str
    route_id: int
    port: int | None
    settings: RouteSettings
    # The asking node's id, for the holder's log.
    sender: str | None = None

    def encode(self) -> str:
        return json.dumps(
            {
                "app": self.app,
                "route": self.route_id,
                "port": self.port,
                "settings": dump_route_settings(self.settings),
                "from": self.sender,
            }
        )

    @classmethod
    def decode(cls, text: str) -> ProvisionRequest:
        try:
            data: Any = json.loads(text)
            sender = data.get("from")
            return cls(
                app=str(data["app"]),
                route_id=int(data["route"]),
                port=None if data.get("port") is None else int(data["port"]),
                settings=load_route_settings(str(data["settings"])),
                sender=None if sender is None else str(sender),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise Malformed(f"a malformed provisioning request ({err})") from None


Notice = Changed | ProvisionRequest


def decode_notice(text: str) -> Notice:
    """A message of a ``provision:<ip>`` channel: a request is a JSON object, a notice never
    starts with ``{`` (its app id is percent-encoded)."""
    if text.startswith("{"):
        return ProvisionRequest.decode(text)
    return Changed.decode(text)


# -- answers and errors ------------------------------------------------------------------

# Each error that crosses nodes, as the HTTP status the API answers it with: the wire keeps
# the status, so that a log line (and an older node) reads it as it always did. An error not
# listed (a bug on the other node, an epoch mismatch there) is Unavailable here: the asking
# node can do nothing better than a 503.
_STATUS_OF: Final[dict[type[RestcpError], int]] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    InvalidSpec: 422,
    Unavailable: 503,
}
_KIND_OF: Final = {status: kind for kind, status in _STATUS_OF.items()}


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An error raised on another node, as it crosses: the class the asking node raises
    again (one of _STATUS_OF), and the sentence for the user."""

    kind: type[RestcpError]
    detail: str

    @classmethod
    def of(cls, err: BaseException) -> RemoteError:
        """What ``err`` becomes on the wire. Only the listed classes themselves cross as
        they are; a subclass (EpochMismatch) and a bug cross as Unavailable."""
        if isinstance(err, RestcpError) and type(err) in _STATUS_OF:
            return cls(type(err), str(err))
        if isinstance(err, RestcpError):
            return cls(Unavailable, str(err))
        return cls(Unavailable, "internal error on the node serving the frontend IP")

    def exception(self) -> RestcpError:
        return self.kind(self.detail)

    def encode(self) -> str:
        return f"error {_STATUS_OF[self.kind]} {self.detail}"

    @classmethod
    def decode(cls, text: str) -> RemoteError:
        word, _, rest = text.partition(" ")
        status, _, detail = rest.partition(" ")
        if word != "error" or not (status.isascii() and status.isdigit()):
            raise Malformed("not error <status> <detail>")
        return cls(_KIND_OF.get(int(status), Unavailable), detail)


@dataclass(frozen=True, slots=True)
class Provisioned:
    """The holder bound and stored the route on ``port``."""

    port: int

    def encode(self) -> str:
        return str(self.port)


@dataclass(frozen=True, slots=True)
class Refused:
    """The holder did not store the route, for ``error``."""

    error: RemoteError

    def encode(self) -> str:
        return self.error.encode()


Reply = Provisioned | Refused


def decode_reply(text: str) -> Reply:
    """A message of a ``provision-success:<app>:<route>`` channel."""
    if text.isascii() and text.isdigit():
        return Provisioned(int(text))
    return Refused(RemoteError.decode(text))
