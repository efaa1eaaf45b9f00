"""The errors the control plane raises; the API maps each onto one HTTP status."""


class RestcpError(Exception):
    """Base of the errors below; ``str(err)`` is a sentence a user can act on."""


class NotFound(RestcpError):
    """The app, route, backend or toxic does not exist (404)."""


class Forbidden(RestcpError):
    """Well-formed, but policy does not allow it, e.g. a backend in a denied network (403)."""


class Conflict(RestcpError):
    """The request clashes with the current state, e.g. a port already taken (409)."""


class DuplicateBackend(Conflict):
    """Another backend of the route has this address already (409): one address is one
    backend, whose share of the clients is its ``weight``."""

    def __init__(self, app: str, route_id: int, other_id: int, host: str, port: int) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(
            f"backend {other_id} of route {route_id} of app {app!r} is {address} already: "
            f"change its weight to give it more clients"
        )
        self.other_id = other_id


class DuplicateToxic(Conflict):
    """The route has a toxic of this name already (409)."""

    def __init__(self, app: str, route_id: int, name: str) -> None:
        super().__init__(
            f"route {route_id} of app {app!r} has a toxic named {name!r} already: change it "
            "(PATCH), delete it, or give the new one another name"
        )
        self.name = name


class InvalidSpec(RestcpError):
    """The request is well-formed JSON but asks for something impossible (422)."""


class Unavailable(RestcpError):
    """The store or the owning node cannot answer now (503)."""


class Provisioning(RestcpError):
    """Not an error: a route was handed to the node that owns its frontend IP, which did not
    answer in time (202). The route appears under ``route_id`` once that node has bound it."""

    def __init__(self, app: str, route_id: int, frontend_ip: str) -> None:
        super().__init__(
            f"route {route_id} of app {app!r} is being provisioned by the node that serves "
            f"{frontend_ip}"
        )
        self.app = app
        self.route_id = route_id
        self.frontend_ip = frontend_ip


class NotYetApplied(RestcpError):
    """Not an error: a change is stored, but the node serving the route's frontend IP did not
    acknowledge it within --provision-timeout (202). It applies it when it can (at the
    latest at its next resync, or when it is back). ``result`` is what the write returned."""

    def __init__(self, key: tuple[str, int], frontend_ip: str, result: object) -> None:
        super().__init__(
            f"route {key[1]} of app {key[0]!r} is changed; the node that serves "
            f"{frontend_ip} has not applied it yet"
        )
        self.key = key
        self.frontend_ip = frontend_ip
        self.result = result


class EpochMismatch(Unavailable):
    """Redis does not hold the cluster this node knows (503): its epoch key is missing (Redis
    came back empty) or holds another id. ``found`` is the epoch Redis has, or None."""

    def __init__(self, expected: str, found: str | None) -> None:
        what = "has no epoch (it lost its data)" if found is None else f"holds epoch {found}"
        super().__init__(
            f"Redis {what}, not this node's epoch {expected}: nothing is read from or written "
            "to it until `restcp cluster reseed` (or `restcp cluster adopt`); see docs/cluster.md"
        )
        self.expected = expected
        self.found = found
