"""Store URLs: where a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL points, and
the options it may carry (docs/cluster.md, "Store URLs")."""

from __future__ import annotations

import dataclasses
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from restcp.errors import InvalidSpec

DEFAULT_PREFIX: Final = "restcp:"
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379
SCHEMES: Final = ("redis", "rediss", "redis+sentinel")


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


# URL query options besides ``prefix``, with their parsers. Anything else is refused when
# the store opens: redis-py would pass an unknown one on and fail at the first command.
OPTIONS: Final[dict[str, Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "client_name": str,
    "max_connections": int,
    "health_check_interval": float,
}
TLS_OPTIONS: Final[dict[str, Any]] = {
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": _flag,
}


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL points."""

    # One (host, port) for a plain Redis; the sentinels to ask for a Sentinel URL.
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    # The Sentinel service (``sentinel monitor NAME ...``); None for a plain Redis.
    service: str | None = None
    username: str | None = None
    password: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """For error messages: the address, never the password."""
        hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.hosts)
        if self.service is not None:
            return f"redis+sentinel://{hosts}/{self.service}/{self.db}"
        return f"{'rediss' if self.tls else 'redis'}://{hosts}/{self.db}"


def parse_url(url: str) -> RedisTarget:
    """``redis://[USER:PASSWORD@]HOST[:PORT][/DB][?prefix=P&...]``, ``rediss://`` alike with
    TLS, ``redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]``."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidSpec(f"store URL {url!r} is not a Redis URL ({', '.join(SCHEMES)})")
    sentinel = parts.scheme == "redis+sentinel"
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_host_port(url, item, default_port) for item in hostlist.split(","))
    if not sentinel and len(hosts) != 1:
        raise InvalidSpec(f"store URL {url!r} names several hosts: use redis+sentinel://")

    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if segments and segments[-1] == "":
        segments.pop()
    service = None
    if sentinel:
        if not segments or not segments[0]:
            raise InvalidSpec(
                f"store URL {url!r} names no Sentinel service: use "
                "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME/DB"
            )
        service = segments.pop(0)
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise InvalidSpec(f"store URL {url!r}: the path must be /DB, a database number")
    db = int(segments[0]) if segments else 0

    prefix = DEFAULT_PREFIX
    allowed = OPTIONS | (TLS_OPTIONS if parts.scheme == "rediss" else {})
    options: list[tuple[str, Any]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name == "prefix":
            prefix = value
        elif name in allowed:
            try:
                options.append((name, allowed[name](value)))
            except ValueError as err:
                raise InvalidSpec(f"store URL {url!r}: bad {name}={value!r}") from err
        else:
            known = ", ".join(["prefix", *allowed])
            raise InvalidSpec(f"store URL {url!r}: unknown option {name!r} (known: {known})")
    return RedisTarget(
        hosts=hosts,
        db=db,
        prefix=prefix,
        tls=parts.scheme == "rediss",
        service=service,
        username=username,
        password=password,
        options=tuple(options),
    )


def _host_port(url: str, item: str, default_port: int) -> tuple[str, int]:
    host, port = item, ""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise InvalidSpec(f"store URL {url!r}: bad address {item!r}")
        port = rest[1:]
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise InvalidSpec(f"store URL {url!r}: bad address {item!r}")
    return unquote(host), int(port) if port else default_port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
