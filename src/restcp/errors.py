"""The errors the control plane raises; the API maps each onto one HTTP status."""


class RestcpError(Exception):
    """Base of the errors below; ``str(err)`` is a sentence a user can act on."""


class NotFound(RestcpError):
    """The app, route or backend does not exist (404)."""


class Conflict(RestcpError):
    """The request clashes with the current state, e.g. a port already taken (409)."""


class InvalidSpec(RestcpError):
    """The request is well-formed JSON but asks for something impossible (422)."""


class Unavailable(RestcpError):
    """The store or the owning node cannot answer now (503)."""
