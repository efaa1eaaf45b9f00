# The compiled engine's interface (see _relay.pyx).
ENDS: tuple[str, ...]
BALANCES: dict[str, int]

# One backend of a route's table: (id, address family, struct sockaddr, weight,
# max_connections or -1, PROXY protocol version: 0 none, 1, 2).
BackendRow = tuple[int, int, bytes, int, int, int]
# One ended connection: (slot, backend id, peer sockaddr, bytes up, bytes down, duration, end,
# spliced: a direction of it went splicing at some point, as the access line's field says;
# connected: the record stands for its "connected" record too, not drained before it ended;
# replaced: the sockaddr it was connected to if its backend no longer has that address).
Record = tuple[int, int | None, bytes, int, int, float, str, bool, bool, bytes | None]
# A relayed connection still open: (slot, backend id, bytes up, bytes down).
Live = tuple[int, int, int, int]
# A slot's most clients admitted and open at once: (slot, most).
Peak = tuple[int, int]
# A relaying connection handed to the asyncio data plane (Engine.handoff): client fd,
# backend fd, bytes held up, bytes held down, up (eof, shut), down (eof, shut), bytes_up,
# bytes_down, backend id, peer sockaddr, age, idle for, half-closed for (-1: not), spliced,
# the sockaddr it is connected to if its backend no longer has that address (else None).
Relaying = tuple[
    int, int, bytes, bytes, tuple[bool, bool], tuple[bool, bool], int, int, int, bytes,
    float, float, float, bool, bytes | None,
]  # fmt: skip
# A connection still connecting, handed over as a new client: client fd, peer, age.
Connecting = tuple[int, bytes, float]

def proxy_header(version: int, src: bytes, dst: bytes) -> bytes: ...

class Engine:
    @property
    def notify_fd(self) -> int: ...
    @property
    def active(self) -> int: ...
    @property
    def sweeps(self) -> int: ...
    def add_route(
        self,
        listen_fd: int,
        backends: list[BackendRow],
        balance: str,
        connect_timeout: float,
        idle_timeout: float,
        half_close_timeout: float,
        max_attempts: int,
        max_connections: int,
        app: str | None = None,
        splice: int = 0,  # 0 off, 1 on (every read spliced), 2 auto (from a bulk read)
        passive_fall: int = 0,  # connect failures in a row that take a row out (0: never)
        try_all: bool = False,  # ... unless every row is out: when_all_down "try_all"
    ) -> int: ...
    def update_route(
        self,
        slot: int,
        backends: list[BackendRow],
        balance: str,
        connect_timeout: float,
        idle_timeout: float,
        half_close_timeout: float,
        max_attempts: int,
        max_connections: int,
        splice: int = 0,
        passive_fall: int = 0,
        try_all: bool = False,
    ) -> None: ...
    def passive_reset(self, slot: int, backend_id: int) -> None: ...
    def set_limit(self, limit: int, app_limit: int = -1) -> None: ...
    def take(self, app: str | None) -> str | None: ...
    def give(self, app: str | None) -> None: ...
    @property
    def places(self) -> int: ...
    def unlisten(self, slot: int) -> None: ...
    def retire(self, slot: int) -> None: ...
    def abort(self, slot: int = -1, backend_id: int = -1, reason: str = "aborted") -> None: ...
    def bulk(self, slot: int) -> int: ...
    def counters(self, slot: int) -> tuple[int, int, int, int, int]: ...
    def resolved(
        self,
        index: int,
        token: int,
        family: int = 0,
        packed: bytes = b"",
        again: bool = False,
        err: int = 0,
    ) -> bool: ...
    def loads(self, slot: int) -> list[tuple[int, bytes, int, int]]: ...
    def drain(self) -> list[Record]: ...
    def drain_live(self) -> tuple[list[Record], list[Live], list[Peak]]: ...
    def handoff(self, slot: int) -> tuple[list[Record], list[Relaying], list[Connecting]]: ...
    def close(self) -> None: ...
    def stop(self) -> None: ...
    def run(self) -> None: ...

class Picker:
    """The engine's backend pick alone, for tests and timing (see _relay.pyx)."""

    def __init__(self, balance: str, seed: int = ...) -> None: ...
    def table(self, rows: list[tuple[int, int, int, int, int]]) -> None: ...
    def pick(self, tried: tuple[int, ...] = (), key: bytes = b"") -> int | None: ...
    def time(self, n: int, key: bytes = b"") -> float: ...
