"""The tables of the SQLite store (store/sqlite.py), and what brings a file written by an
earlier restcp up to them. A node's snapshot file has the same tables."""

from __future__ import annotations

import sqlite3

# Split on semicolons: none may appear in a comment.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    app            TEXT PRIMARY KEY,
    last_route_id  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS routes (
    app              TEXT NOT NULL REFERENCES apps(app),
    id               INTEGER NOT NULL,
    frontend_ip      TEXT NOT NULL,
    port             INTEGER NOT NULL,
    settings         TEXT NOT NULL,
    last_backend_id  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, id)
);
-- Not unique: routes with server names share their port (SNI routing). The store refuses
-- a route on an address another holds unless both have server names.
CREATE INDEX IF NOT EXISTS routes_address ON routes (frontend_ip, port);
CREATE TABLE IF NOT EXISTS backends (
    app       TEXT NOT NULL,
    route_id  INTEGER NOT NULL,
    id        INTEGER NOT NULL,
    ip        TEXT NOT NULL,
    port      INTEGER NOT NULL,
    settings  TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (app, route_id, id),
    FOREIGN KEY (app, route_id) REFERENCES routes(app, id) ON DELETE CASCADE
);
-- A route's toxics, in the order they were added (position). A file from before toxics
-- gets the table as a new one does: that is all its migration takes.
CREATE TABLE IF NOT EXISTS toxics (
    app       TEXT NOT NULL,
    route_id  INTEGER NOT NULL,
    name      TEXT NOT NULL,
    position  INTEGER NOT NULL,
    settings  TEXT NOT NULL,
    PRIMARY KEY (app, route_id, name),
    FOREIGN KEY (app, route_id) REFERENCES routes(app, id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS port_cursors (
    frontend_ip  TEXT PRIMARY KEY,
    cursor       INTEGER NOT NULL
);
-- Apart from apps: a token does not make its app exist (an app exists from its first route
-- on), and the token counter outlives every token, as the route counter outlives routes.
CREATE TABLE IF NOT EXISTS token_counters (
    app      TEXT PRIMARY KEY,
    last_id  INTEGER NOT NULL DEFAULT 0
);
-- Facts about the file itself: a cluster node's snapshot keeps the cluster epoch here.
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
-- TLS certificates by name: the PEM chain and its private key (the reason the file is
-- made readable by its owner only: store/sqlite.py).
CREATE TABLE IF NOT EXISTS certificates (
    name  TEXT PRIMARY KEY,
    cert  TEXT NOT NULL,
    key   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    app         TEXT NOT NULL,
    id          INTEGER NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    PRIMARY KEY (app, id)
);
"""


# The routes table of a file from before SNI routing, whose address was UNIQUE.
_OLD_ROUTES_KEY = "UNIQUE (frontend_ip, port)"


def share_addresses(db: sqlite3.Connection) -> None:
    """Rebuild the routes table of a file from before SNI routing without its UNIQUE
    address (SQLite cannot drop a table's constraint), the rows as they are. Run with
    foreign keys off, outside a transaction: dropping the old table must not cascade to
    the backends and toxics that refer to it (SQLite's "other kinds of table schema
    changes")."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'routes'")
    found = row.fetchone()
    if found is None or _OLD_ROUTES_KEY not in found[0]:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE routes_shared ("
            " app TEXT NOT NULL REFERENCES apps(app), id INTEGER NOT NULL,"
            " frontend_ip TEXT NOT NULL, port INTEGER NOT NULL, settings TEXT NOT NULL,"
            " last_backend_id INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (app, id))"
        )
        db.execute(
            "INSERT INTO routes_shared (app, id, frontend_ip, port, settings, last_backend_id)"
            " SELECT app, id, frontend_ip, port, settings, last_backend_id FROM routes"
        )
        db.execute("DROP TABLE routes")
        db.execute("ALTER TABLE routes_shared RENAME TO routes")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def create_schema(db: sqlite3.Connection) -> None:
    """Create what is missing (in a write transaction): every table of a new file, and in a
    file from an earlier restcp, the tables and columns added since (toxics, a backend's
    settings)."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(backends)")}
    if "settings" not in columns:
        db.execute("ALTER TABLE backends ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'")
