# The compiled engine's interface (see _relay.pyx).
ENDS: tuple[str, ...]
BALANCES: dict[str, int]

# One backend of a route's table: (id, address family, struct sockaddr, weight).
BackendRow = tuple[int, int, bytes, int]
# One ended connection: (slot, backend id, peer sockaddr, bytes up, bytes down, duration, end).
Record = tuple[int, int | None, bytes, int, int, float, str]

class Engine:
    @property
    def notify_fd(self) -> int: ...
    @property
    def active(self) -> int: ...
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
    ) -> None: ...
    def set_limit(self, limit: int) -> None: ...
    def unlisten(self, slot: int) -> None: ...
    def retire(self, slot: int) -> None: ...
    def abort(self, slot: int = -1, backend_id: int = -1, reason: str = "aborted") -> None: ...
    def counters(self, slot: int) -> tuple[int, int, int, int, int]: ...
    def drain(self) -> list[Record]: ...
    def stop(self) -> None: ...
    def run(self) -> None: ...
