"""The embedded store: one SQLite database file (or memory), one connection.

Calls run on the event loop's thread. Each is a single short transaction in WAL mode
(synchronous=NORMAL: a commit survives ``kill -9``; only an OS crash may lose the last
ones), so it costs tens of microseconds and never waits on another writer of this process:
one connection serialises every write, which is why "database is locked" cannot surface from
concurrent API requests. Another process on the same file waits up to ``busy_timeout``.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from restcp.errors import Conflict, DuplicateBackend, DuplicateToxic, InvalidSpec, NotFound
from restcp.model import Backend, Certificate, Route, RouteKey, RouteSettings, Toxic
from restcp.store.base import AppInfo, SnapshotData, TokenInfo
from restcp.store.codec import (
    dump_backend_settings,
    dump_route_settings,
    dump_toxic,
    load_backend,
    load_route_settings,
    load_toxic,
)
from restcp.store.schema import create_schema, share_addresses


def open_url(url: str) -> SqliteStore:
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``memory://``."""
    if url.startswith("memory://"):
        return SqliteStore(":memory:")
    path = url.removeprefix("sqlite:///")
    if not path or path == url:
        raise InvalidSpec(f"store URL {url!r} names no file: use sqlite:///PATH")
    return SqliteStore(path)


class SqliteStore:
    """The Store on one SQLite database, a file in WAL mode or ``:memory:``, through one
    connection: each write is one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _owner_only(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # The busy timeout first: switching to WAL waits for other connections too.
        self._db.execute("PRAGMA busy_timeout=5000")
        _enable_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        share_addresses(self._db)  # before foreign keys are on: see there
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write() as db:
            create_schema(db)
        if path != ":memory:":
            # The write-ahead log and its index exist now; SQLite gives them the mode of
            # the database file, and this makes sure of it.
            for suffix in ("-wal", "-shm"):
                _owner_only(path + suffix, create=False)

    async def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write never has to be
        # upgraded (the upgrade is where SQLite reports "database is locked").
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (disk full, I/O error): a transaction left open
            # would make every later BEGIN fail on this connection.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for reads of several statements, so that another process's commit
        between them cannot pair one state's routes with another state's backends."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    # -- reads ---------------------------------------------------------------------------

    async def list_apps(self) -> list[AppInfo]:
        rows = self._db.execute(
            "SELECT apps.app, COUNT(routes.id) FROM apps "
            "LEFT JOIN routes ON routes.app = apps.app GROUP BY apps.app ORDER BY apps.app"
        ).fetchall()
        return [AppInfo(app, count) for app, count in rows]

    async def list_routes(self, app: str) -> list[Route]:
        with self._read() as db:
            if db.execute("SELECT 1 FROM apps WHERE app = ?", (app,)).fetchone() is None:
                raise NotFound(f"app {app!r} not found")
            return self._routes(app)

    async def all_routes(self) -> list[Route]:
        return self._routes()

    async def get_route(self, app: str, route_id: int) -> Route:
        routes = self._routes(app, route_id)
        if not routes:
            raise NotFound(f"route {route_id} of app {app!r} not found")
        return routes[0]

    async def ports_in_use(self, frontend_ip: str) -> set[int]:
        rows = self._db.execute("SELECT port FROM routes WHERE frontend_ip = ?", (frontend_ip,))
        return {port for (port,) in rows}

    async def get_port_cursor(self, frontend_ip: str) -> int | None:
        row = self._db.execute(
            "SELECT cursor FROM port_cursors WHERE frontend_ip = ?", (frontend_ip,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _routes(self, app: str | None = None, route_id: int | None = None) -> list[Route]:
        """Routes with their backends and toxics: all, one app's, or one."""
        params: tuple[Any, ...] = ()
        route_where = backend_where = ""
        if app is not None:
            params = (app,)
            route_where = backend_where = "WHERE app = ?"
        if route_id is not None:
            params += (route_id,)
            route_where += " AND id = ?"
            backend_where += " AND route_id = ?"
        with self._read() as db:
            backend_rows = db.execute(
                f"SELECT app, route_id, id, ip, port, settings FROM backends {backend_where} "
                "ORDER BY app, route_id, id",
                params,
            ).fetchall()
            toxic_rows = db.execute(
                f"SELECT app, route_id, name, settings FROM toxics {backend_where} "
                "ORDER BY app, route_id, position",
                params,
            ).fetchall()
            route_rows = db.execute(
                "SELECT app, id, frontend_ip, port, settings FROM routes "
                f"{route_where} ORDER BY app, id",
                params,
            ).fetchall()
        backends: dict[tuple[str, int], list[Backend]] = {}
        for b_app, b_route_id, backend_id, ip, port, b_settings in backend_rows:
            backend = load_backend(backend_id, ip, port, b_settings)
            backends.setdefault((b_app, b_route_id), []).append(backend)
        toxics: dict[tuple[str, int], list[Toxic]] = {}
        for t_app, t_route_id, name, t_settings in toxic_rows:
            toxics.setdefault((t_app, t_route_id), []).append(load_toxic(name, t_settings))
        return [
            Route(
                app=r_app,
                id=r_id,
                frontend_ip=frontend_ip,
                port=port,
                settings=load_route_settings(settings),
                backends=tuple(backends.get((r_app, r_id), ())),
                toxics=tuple(toxics.get((r_app, r_id), ())),
            )
            for r_app, r_id, frontend_ip, port, settings in route_rows
        ]

    # -- writes --------------------------------------------------------------------------

    async def create_route(
        self, app: str, frontend_ip: str, port: int, settings: RouteSettings
    ) -> Route:
        with self._write() as db:
            # Routes with server names share their port; any other holds it alone.
            taken = next(
                (
                    (owner_app, owner_id)
                    for owner_app, owner_id, text in db.execute(
                        "SELECT app, id, settings FROM routes WHERE frontend_ip = ? AND port = ?",
                        (frontend_ip, port),
                    )
                    if settings.sni is None or load_route_settings(text).sni is None
                ),
                None,
            )
            if taken is not None:
                raise Conflict(
                    f"port {port} of {frontend_ip} is already used by route {taken[1]} "
                    f"of app {taken[0]!r}"
                )
            db.execute("INSERT OR IGNORE INTO apps (app) VALUES (?)", (app,))
            (route_id,) = db.execute(
                "UPDATE apps SET last_route_id = last_route_id + 1 WHERE app = ? "
                "RETURNING last_route_id",
                (app,),
            ).fetchone()
            db.execute(
                "INSERT INTO routes (app, id, frontend_ip, port, settings) VALUES (?, ?, ?, ?, ?)",
                (app, route_id, frontend_ip, port, dump_route_settings(settings)),
            )
        return Route(app, route_id, frontend_ip, port, settings)

    async def update_route(self, app: str, route_id: int, settings: RouteSettings) -> Route:
        with self._write() as db:
            self._require_route(app, route_id)
            self._check_claims(db, app, route_id, settings)
            db.execute(
                "UPDATE routes SET settings = ? WHERE app = ? AND id = ?",
                (dump_route_settings(settings), app, route_id),
            )
            # Read back in the same transaction: another process may delete it right after.
            return self._routes(app, route_id)[0]

    @staticmethod
    def _check_claims(
        db: sqlite3.Connection, app: str, route_id: int, settings: RouteSettings
    ) -> None:
        """Conflict if the route's new server names clash with another route's on its
        address, or it loses them while others share it: in the write's transaction, so
        two processes' changes cannot both pass (the route service checks first, for its
        message; this is the guarantee)."""
        (ip, port) = db.execute(
            "SELECT frontend_ip, port FROM routes WHERE app = ? AND id = ?", (app, route_id)
        ).fetchone()
        others = db.execute(
            "SELECT app, id, settings FROM routes WHERE frontend_ip = ? AND port = ? "
            "AND NOT (app = ? AND id = ?)",
            (ip, port, app, route_id),
        ).fetchall()
        claimed = set(settings.sni or ())
        for other_app, other_id, text in others:
            theirs = load_route_settings(text).sni
            if settings.sni is None or theirs is None:
                raise Conflict(
                    f"port {port} of {ip} is shared with route {other_id} of app "
                    f"{other_app!r}: only routes with their own server names (sni) share it"
                )
            for name in claimed.intersection(theirs):
                raise Conflict(
                    f"server name {name!r} on port {port} of {ip} is claimed by route "
                    f"{other_id} of app {other_app!r} already"
                )

    async def delete_route(self, app: str, route_id: int) -> None:
        with self._write() as db:
            self._require_route(app, route_id)
            db.execute("DELETE FROM routes WHERE app = ? AND id = ?", (app, route_id))

    async def add_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        with self._write() as db:
            self._require_route(app, route_id)
            self._require_new_address(app, route_id, backend)
            (backend_id,) = db.execute(
                "UPDATE routes SET last_backend_id = last_backend_id + 1 "
                "WHERE app = ? AND id = ? RETURNING last_backend_id",
                (app, route_id),
            ).fetchone()
            backend = backend.replace(id=backend_id)
            db.execute(
                "INSERT INTO backends (app, route_id, id, ip, port, settings) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    app,
                    route_id,
                    backend_id,
                    backend.ip,
                    backend.port,
                    dump_backend_settings(backend),
                ),
            )
        return backend

    async def update_backend(self, app: str, route_id: int, backend: Backend) -> Backend:
        with self._write() as db:
            self._require_backend(app, route_id, backend.id)
            self._require_new_address(app, route_id, backend)
            db.execute(
                "UPDATE backends SET ip = ?, port = ?, settings = ? "
                "WHERE app = ? AND route_id = ? AND id = ?",
                (
                    backend.ip,
                    backend.port,
                    dump_backend_settings(backend),
                    app,
                    route_id,
                    backend.id,
                ),
            )
        return backend

    async def delete_backend(self, app: str, route_id: int, backend_id: int) -> None:
        with self._write() as db:
            self._require_backend(app, route_id, backend_id)
            db.execute(
                "DELETE FROM backends WHERE app = ? AND route_id = ? AND id = ?",
                (app, route_id, backend_id),
            )

    async def add_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        with self._write() as db:
            self._require_route(app, route_id)
            if self._has_toxic(app, route_id, toxic.name):
                raise DuplicateToxic(app, route_id, toxic.name)
            db.execute(
                "INSERT INTO toxics (app, route_id, name, position, settings) VALUES "
                "(?, ?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM toxics "
                "WHERE app = ? AND route_id = ?), ?)",
                (app, route_id, toxic.name, app, route_id, dump_toxic(toxic)),
            )
        return toxic

    async def update_toxic(self, app: str, route_id: int, toxic: Toxic) -> Toxic:
        with self._write() as db:
            self._require_toxic(app, route_id, toxic.name)
            db.execute(
                "UPDATE toxics SET settings = ? WHERE app = ? AND route_id = ? AND name = ?",
                (dump_toxic(toxic), app, route_id, toxic.name),
            )
        return toxic

    async def delete_toxic(self, app: str, route_id: int, name: str) -> None:
        with self._write() as db:
            self._require_toxic(app, route_id, name)
            db.execute(
                "DELETE FROM toxics WHERE app = ? AND route_id = ? AND name = ?",
                (app, route_id, name),
            )

    async def touch_route(self, app: str, route_id: int) -> None:
        # No versions here: the one node applies what it reads.
        self._require_route(app, route_id)

    async def set_port_cursor(self, frontend_ip: str, cursor: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO port_cursors (frontend_ip, cursor) VALUES (?, ?) "
                "ON CONFLICT (frontend_ip) DO UPDATE SET cursor = excluded.cursor",
                (frontend_ip, cursor),
            )

    # -- certificates ----------------------------------------------------------------------

    async def list_certificates(self) -> list[Certificate]:
        rows = self._db.execute("SELECT name, cert, key FROM certificates ORDER BY name")
        return [Certificate(*row) for row in rows]

    async def get_certificate(self, name: str) -> Certificate:
        row = self._db.execute(
            "SELECT name, cert, key FROM certificates WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"certificate {name!r} not found")
        return Certificate(*row)

    async def create_certificate(self, certificate: Certificate) -> None:
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO certificates (name, cert, key) VALUES (?, ?, ?)",
                    (certificate.name, certificate.cert, certificate.key),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a certificate named {certificate.name!r} exists") from None

    async def replace_certificate(self, certificate: Certificate) -> None:
        with self._write() as db:
            changed = db.execute(
                "UPDATE certificates SET cert = ?, key = ? WHERE name = ?",
                (certificate.cert, certificate.key, certificate.name),
            ).rowcount
            if not changed:
                raise NotFound(f"certificate {certificate.name!r} not found")

    async def delete_certificate(self, name: str) -> None:
        with self._write() as db:
            if not db.execute("DELETE FROM certificates WHERE name = ?", (name,)).rowcount:
                raise NotFound(f"certificate {name!r} not found")

    # -- API tokens ------------------------------------------------------------------------

    async def create_token(self, app: str, token_hash: str, created_at: float) -> TokenInfo:
        with self._write() as db:
            if db.execute("SELECT 1 FROM tokens WHERE hash = ?", (token_hash,)).fetchone():
                raise Conflict("a token with this hash is already stored")
            db.execute("INSERT OR IGNORE INTO token_counters (app) VALUES (?)", (app,))
            (token_id,) = db.execute(
                "UPDATE token_counters SET last_id = last_id + 1 WHERE app = ? RETURNING last_id",
                (app,),
            ).fetchone()
            db.execute(
                "INSERT INTO tokens (app, id, hash, created_at) VALUES (?, ?, ?, ?)",
                (app, token_id, token_hash, created_at),
            )
        return TokenInfo(app, token_id, created_at)

    async def list_tokens(self, app: str) -> list[TokenInfo]:
        rows = self._db.execute(
            "SELECT id, created_at FROM tokens WHERE app = ? ORDER BY id", (app,)
        ).fetchall()
        return [TokenInfo(app, token_id, created_at) for token_id, created_at in rows]

    async def delete_token(self, app: str, token_id: int) -> None:
        with self._write() as db:
            deleted = db.execute(
                "DELETE FROM tokens WHERE app = ? AND id = ?", (app, token_id)
            ).rowcount
            if not deleted:
                raise NotFound(f"token {token_id} of app {app!r} not found")

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        row = self._db.execute(
            "SELECT app, id, created_at FROM tokens WHERE hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else TokenInfo(*row)

    # -- a cluster node's snapshot (store.base.Snapshot) --------------------------------------
    # The same tables as the embedded store, so a snapshot file is also a store a single
    # node can serve (--store sqlite:///PATH) in a disaster; the epoch is in ``meta``.

    async def load_snapshot(self, frontend_ips: Collection[str]) -> SnapshotData:
        ips = set(frontend_ips)
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            routes = self._with_certificates([r for r in self._routes() if r.frontend_ip in ips])
            route_counters = dict(db.execute("SELECT app, last_route_id FROM apps").fetchall())
            keys = {r.key for r in routes}
            backend_counters = {
                (app, route_id): last
                for app, route_id, last in db.execute("SELECT app, id, last_backend_id FROM routes")
                if (app, route_id) in keys
            }
        return SnapshotData(
            epoch=None if row is None else str(row[0]),
            routes=tuple(routes),
            route_counters=route_counters,
            backend_counters=backend_counters,
        )

    async def save_snapshot(
        self, epoch: str | None, upserts: Iterable[Route], deletes: Iterable[RouteKey]
    ) -> None:
        with self._write() as db:
            if epoch is not None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('epoch', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (epoch,),
                )
            for app, route_id in deletes:
                db.execute("DELETE FROM routes WHERE app = ? AND id = ?", (app, route_id))
            for route in upserts:
                self._put_route(db, route)

    def _put_route(self, db: sqlite3.Connection, route: Route) -> None:
        """A route with its ids as given, replacing the one stored under its id and any
        other one on its address (the snapshot follows the cluster, which moved on)."""
        db.execute(
            "DELETE FROM routes WHERE frontend_ip = ? AND port = ? AND NOT (app = ? AND id = ?)",
            (route.frontend_ip, route.port, route.app, route.id),
        )
        db.execute("INSERT OR IGNORE INTO apps (app) VALUES (?)", (route.app,))
        db.execute(
            "UPDATE apps SET last_route_id = MAX(last_route_id, ?) WHERE app = ?",
            (route.id, route.app),
        )
        top = max((b.id for b in route.backends), default=0)
        db.execute(
            "INSERT INTO routes (app, id, frontend_ip, port, settings, last_backend_id) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app, id) DO UPDATE SET "
            "frontend_ip = excluded.frontend_ip, port = excluded.port, "
            "settings = excluded.settings, "
            "last_backend_id = MAX(last_backend_id, excluded.last_backend_id)",
            (
                route.app,
                route.id,
                route.frontend_ip,
                route.port,
                dump_route_settings(route.settings),
                top,
            ),
        )
        db.execute("DELETE FROM backends WHERE app = ? AND route_id = ?", (route.app, route.id))
        db.executemany(
            "INSERT INTO backends (app, route_id, id, ip, port, settings) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (route.app, route.id, b.id, b.ip, b.port, dump_backend_settings(b))
                for b in route.backends
            ],
        )
        db.execute("DELETE FROM toxics WHERE app = ? AND route_id = ?", (route.app, route.id))
        db.executemany(
            "INSERT INTO toxics (app, route_id, name, position, settings) VALUES (?, ?, ?, ?, ?)",
            [
                (route.app, route.id, t.name, position, dump_toxic(t))
                for position, t in enumerate(route.toxics, 1)
            ],
        )
        # The certificates it is served with, so that it is served with them again from
        # the snapshot alone (Redis down).
        db.executemany(
            "INSERT INTO certificates (name, cert, key) VALUES (?, ?, ?) ON CONFLICT (name) "
            "DO UPDATE SET cert = excluded.cert, key = excluded.key",
            [(c.name, c.cert, c.key) for c in route.certificates],
        )

    def _with_certificates(self, routes: list[Route]) -> list[Route]:
        """Routes read from a snapshot, with the certificates their settings name."""
        if not any(r.settings.certificate_names() for r in routes):
            return routes
        stored = {
            name: Certificate(name, cert, key)
            for name, cert, key in self._db.execute("SELECT name, cert, key FROM certificates")
        }
        return [
            dataclasses.replace(
                r,
                certificates=tuple(
                    stored[n] for n in r.settings.certificate_names() if n in stored
                ),
            )
            if r.settings.certificate_names()
            else r
            for r in routes
        ]

    def _require_route(self, app: str, route_id: int) -> None:
        row = self._db.execute(
            "SELECT 1 FROM routes WHERE app = ? AND id = ?", (app, route_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"route {route_id} of app {app!r} not found")

    def _require_backend(self, app: str, route_id: int, backend_id: int) -> None:
        self._require_route(app, route_id)
        row = self._db.execute(
            "SELECT 1 FROM backends WHERE app = ? AND route_id = ? AND id = ?",
            (app, route_id, backend_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"backend {backend_id} of route {route_id} of app {app!r} not found")

    def _has_toxic(self, app: str, route_id: int, name: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM toxics WHERE app = ? AND route_id = ? AND name = ?",
            (app, route_id, name),
        ).fetchone()
        return row is not None

    def _require_toxic(self, app: str, route_id: int, name: str) -> None:
        self._require_route(app, route_id)
        if not self._has_toxic(app, route_id, name):
            raise NotFound(f"toxic {name!r} of route {route_id} of app {app!r} not found")

    def _require_new_address(self, app: str, route_id: int, backend: Backend) -> None:
        """No other backend of the route (than ``backend.id``) has ``backend``'s address. A
        backend that keeps its address is not checked: a pair stored before this rule may
        still be changed, each until one of them is deleted."""
        kept = self._db.execute(
            "SELECT 1 FROM backends WHERE app = ? AND route_id = ? AND id = ? AND ip = ? "
            "AND port = ?",
            (app, route_id, backend.id, backend.ip, backend.port),
        ).fetchone()
        if kept is not None:
            return
        row = self._db.execute(
            "SELECT id FROM backends WHERE app = ? AND route_id = ? AND ip = ? AND port = ? "
            "AND id != ?",
            (app, route_id, backend.ip, backend.port, backend.id),
        ).fetchone()
        if row is not None:
            raise DuplicateBackend(app, route_id, row[0], backend.ip, backend.port)


def _owner_only(path: str, *, create: bool = True) -> None:
    """Make ``path`` readable and writable by its owner alone: the file holds the private
    keys of certificates (and token hashes). A new file is created so, before SQLite opens
    it; an existing one loses its group and other bits."""
    if create:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return
        except FileExistsError:
            pass
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL. The switch needs a moment alone with the file and SQLite does not
    apply the busy timeout to it, so a second process opening the same new file at the same
    instant is retried here (briefly, at start only) rather than failing."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
