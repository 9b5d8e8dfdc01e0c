"""The SQLite outbox's schema: numbered migrations, applied in order at start.

Never edit a migration that has shipped: add the next one. ``migrate`` is also
what ``bench/prefill.py`` uses to build a prefilled outbox file.
"""

from __future__ import annotations

import sqlite3

import structlog

log = structlog.get_logger("eventd.store")

# Numbered migrations, applied in order at start. Never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        event TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        received_at INTEGER NOT NULL,   -- unix ms
        body BLOB NOT NULL              -- the normalized message, JSON
    );
    CREATE INDEX events_message_id ON events (source, message_id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    INSERT INTO settings VALUES ('dedup_window_ms', 86400000);
    -- A repeat of (source, messageId) inside the dedup window is dropped in SQL, so a
    -- whole group commit stays one executemany.
    CREATE TRIGGER events_dedup BEFORE INSERT ON events
    WHEN EXISTS (
        SELECT 1 FROM events
        WHERE source = NEW.source AND message_id = NEW.message_id
          AND received_at > NEW.received_at
                - (SELECT value FROM settings WHERE key = 'dedup_window_ms')
    )
    BEGIN SELECT RAISE(IGNORE); END;
    CREATE TABLE cursors (
        destination TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        seq INTEGER NOT NULL,
        source TEXT NOT NULL,
        message_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        failed_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'dead'   -- 'dead' or 'redrive'
    );
    CREATE INDEX dead_letters_destination ON dead_letters (destination, state, id);
    CREATE TABLE replays (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        until_seq INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    """
    -- Users whose events are no longer taken (the right to object), and whether their
    -- stored events are to be deleted too (the right to erasure).
    CREATE TABLE suppressions (
        user_id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        erase INTEGER NOT NULL,         -- 1: delete the stored events too
        erased_events INTEGER NOT NULL DEFAULT 0,
        erased_at INTEGER               -- when none was left; NULL while some are
    ) WITHOUT ROWID;
    """,
    """
    -- Erasures forwarded to destinations (eventd/privacy/): one row per suppressed
    -- user and destination, so a restart resumes what is not finished.
    CREATE TABLE deletions (
        user_id TEXT NOT NULL,          -- the suppression's userId
        destination TEXT NOT NULL,
        type TEXT NOT NULL,             -- the destination's type when asked
        state TEXT NOT NULL,            -- requested | done | failed | unsupported
        erasure BLOB NOT NULL,          -- JSON: user_ids, anonymous_ids, events [seq, source, ms]
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,                    -- failed: why; requested: the last retry's reason;
                                        -- unsupported: what to do by hand
        requested_at INTEGER NOT NULL,  -- unix ms, starts the retry_max_age clock
        updated_at INTEGER NOT NULL,
        next_attempt_at INTEGER,        -- requested after a Retry: not before
        PRIMARY KEY (user_id, destination)
    ) WITHOUT ROWID;
    """,
    """
    -- The (source, messageId) dedup moved out of SQLite into an LSM set beside the
    -- file (eventd/store/dedup.py, RocksDB): each insert into this B-tree index
    -- landed on a random page with the random UUIDs SDKs send, and ingest fell as
    -- the store grew (issue 18). The set is built from the log's last dedup
    -- window when the store opens (SqliteStore._catch_up_dedup).
    DROP TRIGGER IF EXISTS events_dedup;
    DROP INDEX IF EXISTS events_message_id;
    """,
)

EVENT_COLUMNS = "source, message_id, type, event, user_id, anonymous_id, received_at, body"
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The outbox writer gives each event its seq itself (so the dedup set can keep it).
INSERT_EVENT_SEQ = f"INSERT INTO events (seq, {EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied; returns the schema version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] or 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("migration applied", version=number)
        version = number
    return version


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would commit on its own)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
