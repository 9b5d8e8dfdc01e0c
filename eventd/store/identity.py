"""identity.db: the identity graph's own SQLite file (all of its SQL).

Beside eventd.db, with its own writer, so identity writes never wait on (or hold
up) the ingest group commit. Tables::

    profiles     key (an integer in creation order: graph.Profile.key) -> profile_id and
                 the profile's record (JSON: graph.Profile.record()). No index on
                 profile_id (version 4): a profile is found through its identifiers, and
                 a new one's row is an append to one B-tree, not a random insert into
                 a second (the text key's index): ~10 K instructions per new person
    identifiers  (kind 'u'|'a', value) -> the profile's key (an anonymousId: its current
                 owner)
    links        (anonymous_id, user_id): linked_at, seq (the event that made it) and
                 version (a counter bumped when the row is new or its profile_id
                 changed: what warehouse feeds send after their position);
                 anonymous_id '' is the row recording a userId's membership. No
                 index on user_id (version 3): a userId's links are read by key,
                 from its profile's anonymousIds
    timeline     (key 'u:ID'|'a:ID', first, last): seqs, the JSON array of the seqs of
                 that identifier's events in one page (first..last, ascending): which
                 identifier each event is filed under, for the stitched timeline and
                 erasure without an index on the ingest hot path. One row per
                 identifier and page, not per event: a row per event was a third of
                 the writer's SQLite time (issue 15); an identifier's rows never
                 overlap (pages do not)
    state        cursor (the last log seq applied), version (the links counter) and
                 profiles (the last profile key given out: keys are never reused)
    positions    per warehouse destination: the links version it has stored

The graph's cursor is written in the same transaction as what the page changed,
so a crash re-applies nothing twice and misses nothing.

Writes (and the graph's reads while applying a page) run in the identity writer
(eventd/identity/writer.py, a process of its own); API and delivery reads on a
reader thread in eventd's process, beside it (WAL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from eventd import codec
from eventd.identity.graph import ANONYMOUS, USER, Changes, Graph, Link, Profile, anonymous_ranges
from eventd.identity.links import IdentityLink

T = TypeVar("T")
CHUNK = 500  # ids per IN (...) list: under SQLite's variable limit
SCHEMA = """
BEGIN;
CREATE TABLE profiles (key INTEGER PRIMARY KEY, profile_id TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE identifiers (
    kind TEXT NOT NULL, value TEXT NOT NULL, key INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE links (
    anonymous_id TEXT NOT NULL, user_id TEXT NOT NULL, linked_at TEXT NOT NULL,
    seq INTEGER NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (anonymous_id, user_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX links_version ON links (version);
CREATE TABLE timeline (
    key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, seqs BLOB NOT NULL,
    PRIMARY KEY (key, first)
) WITHOUT ROWID;
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO state VALUES ('cursor', 0), ('version', 0), ('profiles', 0);
CREATE TABLE positions (destination TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 4;
COMMIT;
"""
# Version 1 kept a timeline row per event (key, seq): moved into version 2's rows, at
# most TIMELINE_RUN seqs each (a row is read whole).
MIGRATE_TIMELINE = """
ALTER TABLE timeline RENAME TO timeline_v1;
CREATE TABLE timeline (
    key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, seqs BLOB NOT NULL,
    PRIMARY KEY (key, first)
) WITHOUT ROWID;
"""
TIMELINE_RUN = 5000
KEYS = 100_000  # profile_id -> key pairs profile_of() keeps for profile()
# Version 2 had an index on links (user_id), for a merge's resend and erasure; both now
# read a userId's links by primary key, from its profile's anonymousIds (every link of
# a userId is to one of them), and each new link no longer writes a third B-tree.
MIGRATE_LINKS = "DROP INDEX IF EXISTS links_user"
# Version 3 keyed profiles by their text profile_id (a rowid table and the key's index)
# and pointed identifiers at that text. Version 4's keys are version 3's rowids (unique,
# in creation order); an identifier whose profile is gone (none should be) is dropped,
# as version 3 read it as no profile.
MIGRATE_KEYS = """
ALTER TABLE profiles RENAME TO profiles_v3;
ALTER TABLE identifiers RENAME TO identifiers_v3;
CREATE TABLE profiles (key INTEGER PRIMARY KEY, profile_id TEXT NOT NULL, body BLOB NOT NULL);
INSERT INTO profiles (key, profile_id, body)
    SELECT rowid, profile_id, body FROM profiles_v3 ORDER BY rowid;
CREATE TABLE identifiers (
    kind TEXT NOT NULL, value TEXT NOT NULL, key INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
INSERT INTO identifiers (kind, value, key)
    SELECT i.kind, i.value, p.rowid FROM identifiers_v3 i
    JOIN profiles_v3 p ON p.profile_id = i.profile_id;
DROP TABLE identifiers_v3;
DROP TABLE profiles_v3;
INSERT INTO state VALUES ('profiles', (SELECT coalesce(max(key), 0) FROM profiles));
PRAGMA user_version = 4;
"""
LINK_COLUMNS = "anonymous_id, user_id, linked_at, seq"


def key_of(kind: str, value: str) -> str:
    """An identifier's timeline key: ``u:ID`` or ``a:ID``."""
    return f"{kind}:{value}"


def _profile(key: int, body: bytes) -> Profile:
    """A stored profile: its record, with its row's key."""
    profile = Profile.from_record(codec.loads(body))
    profile.key = key
    return profile


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``script``'s statements one by one (inside the caller's transaction:
    executescript would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _link(row: Sequence[Any]) -> Link:
    return Link(row[0] or None, row[1], row[2], row[3])


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _configure(conn, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA secure_delete=ON")  # erased profiles do not linger in free pages


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any. A failed COMMIT (``database or disk is
    full``) may have rolled it back already (SQLite does on some errors: see "Response
    To Errors Within A Transaction", sqlite.org/lang_transaction.html), and a ROLLBACK
    then fails with "no transaction is active", hiding the real error."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; rolled back (when SQLite has not already) on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


class ReaderThread:
    """An identity backend's reads on one thread of their own, beside eventd's loop
    (:meth:`read`), with what a reader holds (``_r``) closed on that thread."""

    _reader: ThreadPoolExecutor | None = None
    _r: Any = None

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="eventd-identity-reader")

    async def close_reader(self) -> None:
        if self._reader is None:
            return
        if self._r is not None:
            await self.read(self._r.close)
            self._r = None
        self._reader.shutdown(wait=True)
        self._reader = None

    def abort_reader(self) -> None:
        """Leave the reader thread to end its read in hand and nothing after it (queued
        reads are cancelled), without waiting; what it holds is closed with the
        process (a SQLite read ends within its busy timeout)."""
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
            self._reader = None
        self._r = None

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the reader thread (it may use :attr:`r`)."""
        assert self._reader is not None, "identity store reader not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)


class IdentityStore(ReaderThread):
    """SQLite's :class:`~eventd.store.base.IdentityBackend`: owns identity.db's
    connections, the writer's (eventd/identity/writer.py opens it, in the writer
    process) and a reader on a thread of its own (in eventd's process). Pickled (to the
    writer process), it is its path and settings: nothing open crosses."""

    in_process = False  # a file: the writer opens it from a process of its own

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._reader: ThreadPoolExecutor | None = None
        # profile_id -> key of the profiles profile_of() found, for profile(): the graph
        # asks for a profile by id after it asked whose an identifier is (bounded: KEYS)
        self._keys: dict[str, int] = {}

    def __getstate__(self) -> tuple[Path, str]:
        return self.path, self.synchronous

    def __setstate__(self, state: tuple[Path, str]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    # -- life cycle ----------------------------------------------------------------

    def open_writer(self) -> None:
        """Open the write connection, creating the file and its tables when new.

        Raises sqlite3.Error (``database or disk is full``...) with nothing left open:
        the caller may try again later (the schema is created in one transaction)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _configure(conn, self.synchronous)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < 1:
                conn.executescript(SCHEMA)
            else:
                if version < 2:
                    _migrate_timeline(conn)
                if version < 3:
                    with _transaction(conn):
                        conn.execute(MIGRATE_LINKS)
                        conn.execute("PRAGMA user_version = 3")
                if version < 4:
                    with _transaction(conn):
                        _script(conn, MIGRATE_KEYS)
        except BaseException:
            _rollback(conn)
            conn.close()
            raise
        self._w = conn

    def close(self) -> None:
        self._keys.clear()
        if self._w is not None:
            self._w.close()
            self._w = None

    async def open_reader(self) -> None:
        """Open the reader (after the writer made the file); may be called again after
        it raised (sqlite3.Error)."""
        self._start_reader()

        def connect() -> None:
            self._r = _connect(self.path, self.synchronous)
            self._r.execute("PRAGMA query_only=1")

        await self.read(connect)

    @property
    def w(self) -> sqlite3.Connection:
        assert self._w is not None, "identity store writer not open"
        return self._w

    @property
    def r(self) -> sqlite3.Connection:
        assert self._r is not None, "identity store reader not open"
        return self._r

    # -- the graph's backing (the writer) ---------------------------------------------

    def cursor(self) -> int:
        return int(self.w.execute("SELECT value FROM state WHERE key = 'cursor'").fetchone()[0])

    def profile_of(self, kind: str, value: str) -> str | None:
        row = self.w.execute(
            "SELECT p.key, p.profile_id FROM identifiers i JOIN profiles p ON p.key = i.key"
            " WHERE i.kind = ? AND i.value = ?",
            (kind, value),
        ).fetchone()
        if row is None:
            return None
        if len(self._keys) >= KEYS:
            self._keys.clear()
        key, pid = row
        self._keys[pid] = key
        return str(pid)

    def profile(self, profile_id: str) -> Profile | None:
        key = self._keys.get(profile_id)
        if key is not None:
            row = self.w.execute(
                "SELECT key, body FROM profiles WHERE key = ? AND profile_id = ?",
                (key, profile_id),
            ).fetchone()
        else:
            # Not found through profile_of() (or forgotten since): profile_id has no index,
            # so this reads the whole table. The graph never gets here: it reads a profile
            # only once an identifier led it there (prefetch, or profile_of()).
            row = self.w.execute(
                "SELECT key, body FROM profiles WHERE profile_id = ?", (profile_id,)
            ).fetchone()
        return None if row is None else _profile(*row)

    def links_of(self, anonymous_id: str) -> list[Link]:
        return [
            _link(r)
            for r in self.w.execute(
                f"SELECT {LINK_COLUMNS} FROM links WHERE anonymous_id = ?", (anonymous_id,)
            )
        ]

    def prefetch(
        self, graph: Graph, ids: Iterable[tuple[str, str]], linking: Iterable[str] = ()
    ) -> None:
        """Read the identifiers and profiles a page will need, and the links of the
        anonymousIds it may link (``linking``), in a few queries."""
        wanted: dict[str, set[str]] = {USER: set(), ANONYMOUS: set()}
        for kind, value in ids:
            wanted[kind].add(value)
        links: dict[str, list[Link]] = {a: [] for a in linking}
        for chunk in _chunks(links):
            for row in self.w.execute(
                f"SELECT {LINK_COLUMNS} FROM links WHERE anonymous_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ):
                links[row[0]].append(_link(row))
        keys: dict[tuple[str, str], int] = {}
        found: dict[tuple[str, str], str | None] = {}
        for kind, values in wanted.items():
            for chunk in _chunks(values):
                found.update({(kind, v): None for v in chunk})
                rows = self.w.execute(
                    "SELECT value, key FROM identifiers WHERE kind = ? AND value IN"
                    f" ({','.join('?' * len(chunk))})",
                    (kind, *chunk),
                )
                keys.update({(kind, v): key for v, key in rows})
        by_key: dict[int, Profile] = {}
        for numbers in _chunks(set(keys.values())):
            bodies = self.w.execute(
                f"SELECT key, body FROM profiles WHERE key IN ({','.join('?' * len(numbers))})",
                numbers,
            )
            by_key.update({key: _profile(key, body) for key, body in bodies})
        for ident, key in keys.items():
            profile = by_key.get(key)  # none: an identifier without its profile, none at all
            found[ident] = None if profile is None else profile.profile_id
        graph.seed(found, {p.profile_id: p for p in by_key.values()}, links)

    def apply(self, changes: Changes, cursor: int) -> None:
        """Write what a page changed and the cursor past it, in one transaction."""
        w = self.w
        # Blobs are bound as bytearray, not bytes: the sqlite3 module binds a bytearray
        # directly but sends bytes through its adapter look-up, which raises and clears an
        # AttributeError per value (callgrind: ~2,100 instructions per bytes value).
        # Both are stored as the same BLOB.
        with _transaction(w):
            state = dict(w.execute("SELECT key, value FROM state"))
            version, last_key = int(state["version"]), int(state["profiles"])
            profiles = changes.profiles
            rows = []
            for pid, p in profiles.items():
                if not p.key:  # new: the next key (a failed page's are forgotten with it)
                    last_key += 1
                    p.key = last_key
                rows.append((p.key, pid, bytearray(codec.dumps(p.record()))))
            w.executemany(
                "INSERT OR REPLACE INTO profiles (key, profile_id, body) VALUES (?, ?, ?)", rows
            )
            w.executemany(
                "DELETE FROM profiles WHERE key = ?",
                [(key,) for pid, key in changes.removed_keys.items() if pid not in profiles],
            )
            # Every identifier the graph moves, it moves to a profile it marked changed; a
            # method call per identifier (two per new person) is left to the exception.
            get = profiles.get
            w.executemany(
                "INSERT OR REPLACE INTO identifiers (kind, value, key) VALUES (?, ?, ?)",
                [
                    (k, v, to.key if (to := get(pid)) is not None else self._stored_key(pid))
                    for (k, v), pid in changes.ids.items()
                ],
            )
            new = []
            for link in changes.links:
                version += 1
                new.append(
                    (link.anonymous_id or "", link.user_id, link.linked_at, link.seq, version)
                )
            w.executemany(
                f"INSERT INTO links ({LINK_COLUMNS}, version) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                new,
            )
            bumped = []
            for user in sorted(changes.resend_users):
                for anon in _linked(w, user, self._owner(changes, user)):
                    version += 1
                    bumped.append((version, anon, user))
            w.executemany(
                "UPDATE links SET version = ? WHERE anonymous_id = ? AND user_id = ?", bumped
            )
            w.executemany(
                "INSERT OR IGNORE INTO timeline (key, first, last, seqs) VALUES (?, ?, ?, ?)",
                [
                    (key_of(kind, value), seqs[0], seqs[-1], bytearray(orjson.dumps(seqs)))
                    for (kind, value), seqs in changes.events.items()
                ],
            )
            w.executemany(
                "UPDATE state SET value = ? WHERE key = ?",
                [(cursor, "cursor"), (version, "version"), (last_key, "profiles")],
            )

    def _stored_key(self, profile_id: str) -> int:
        """The key of a stored profile an identifier is moved to."""
        stored = self.profile(profile_id)
        if stored is None:
            raise LookupError(f"identity.db: an identifier points at no profile: {profile_id}")
        return stored.key

    def _owner(self, changes: Changes, user_id: str) -> Profile | None:
        """The profile ``user_id`` belongs to once ``changes`` are written."""
        pid = changes.ids.get((USER, user_id)) or self.profile_of(USER, user_id)
        if pid is None:
            return None
        return changes.profiles.get(pid) or self.profile(pid)

    def erase(self, user_id: str) -> list[int]:
        """Delete the profile of ``user_id`` and every identity linked to it; returns the
        log seqs of its anonymous events (links.py's rule), for the event store to delete."""
        pid = self.profile_of(USER, user_id)
        profile = None if pid is None else self.profile(pid)
        if pid is None or profile is None:
            return []
        w = self.w

        def between(key: str, lo: int, hi: int) -> list[int]:
            return _newest(w, key, lo, hi, None)[::-1]

        seqs = anonymous_seqs(profile, self.links_of, between)
        row = profile.key
        with _transaction(w):
            w.execute("DELETE FROM profiles WHERE key = ?", (row,))
            # Its userIds, and the anonymousIds it owns (a shared one may be another's now).
            w.executemany(
                "DELETE FROM identifiers WHERE kind = ? AND value = ? AND key = ?",
                [(USER, u, row) for u in profile.user_ids]
                + [(ANONYMOUS, a, row) for a in profile.anonymous_ids],
            )
            w.executemany(
                "DELETE FROM links WHERE anonymous_id = ? AND user_id = ?",
                [(a, u) for u in profile.user_ids for a in ("", *profile.anonymous_ids)],
            )
            w.executemany(
                "DELETE FROM timeline WHERE key = ?",
                [(key_of(USER, u),) for u in profile.user_ids],
            )
            gone = set(seqs)
            for key in {key_of(ANONYMOUS, a) for a in profile.anonymous_ids}:
                _drop_seqs(w, key, gone)
        return sorted(seqs)

    def save_position(self, destination: str, version: int) -> None:
        self.w.execute(
            "INSERT INTO positions VALUES (?, ?) ON CONFLICT (destination) DO UPDATE"
            " SET version = excluded.version",
            (destination, version),
        )

    # -- reads beside the writer (reader thread) --------------------------------------

    def find(self, kind: str, value: str) -> Profile | None:
        row = self.r.execute(
            "SELECT p.key, p.body FROM identifiers i JOIN profiles p ON p.key = i.key"
            " WHERE i.kind = ? AND i.value = ?",
            (kind, value),
        ).fetchone()
        return None if row is None else _profile(*row)

    def find_many(self, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Profile]:
        """Profiles by identifier, for a delivery batch."""
        out: dict[tuple[str, str], Profile] = {}
        for kind, value in set(ids):
            found = self.find(kind, value)
            if found is not None:
                out[(kind, value)] = found
        return out

    def links(self, anonymous_ids: Iterable[str]) -> dict[str, list[Link]]:
        out: dict[str, list[Link]] = {}
        for chunk in _chunks(set(anonymous_ids)):
            for row in self.r.execute(
                f"SELECT {LINK_COLUMNS} FROM links WHERE anonymous_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ):
                out.setdefault(row[0], []).append(_link(row))
        return out

    def timeline(self, profile: Profile, before: int, limit: int) -> list[int]:
        """The log seqs of a profile's events below ``before``, newest first."""

        def newest(key: str, lo: int, hi: int, n: int) -> list[int]:
            return _newest(self.r, key, lo, hi, n)

        return timeline_seqs(profile, self.links(profile.anonymous_ids), before, limit, newest)

    def links_after(self, version: int, limit: int) -> list[tuple[int, IdentityLink]]:
        """Links whose version is past ``version`` (with the profile they belong to now)."""
        rows = self.r.execute(
            "SELECT l.version, l.anonymous_id, l.user_id, p.profile_id, l.linked_at FROM links l"
            " JOIN identifiers i ON i.kind = 'u' AND i.value = l.user_id"
            " JOIN profiles p ON p.key = i.key"
            " WHERE l.version > ? ORDER BY l.version LIMIT ?",
            (version, limit),
        ).fetchall()
        return [
            (v, IdentityLink(anon or None, user, pid, link_time(linked_at)))
            for v, anon, user, pid, linked_at in rows
        ]

    def position(self, destination: str) -> int:
        row = self.r.execute(
            "SELECT version FROM positions WHERE destination = ?", (destination,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def counts(self) -> dict[str, int]:
        """Rows per table (tests, metrics)."""
        return {
            t: int(self.r.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("profiles", "identifiers", "links")
        }


def timeline_seqs(
    profile: Profile,
    links: Mapping[str, list[Link]],
    before: int,
    limit: int,
    newest: Callable[[str, int, int, int], list[int]],
) -> list[int]:
    """A profile's stitched timeline (links.py's rule), newest first: its userIds' events
    and its anonymousIds' events in the ranges that belong to it (``links``: each
    anonymousId's). ``newest(key, lo, hi, n)`` gives a timeline key's seqs in
    [lo, hi), newest first, at most n (each backend's own read)."""
    seqs: list[int] = []
    for user in profile.user_ids:
        seqs += newest(key_of(USER, user), 0, before, limit)
    for anon in profile.anonymous_ids:
        ranges = (
            anonymous_ranges(links.get(anon, []), profile.user_ids)
            if profile.user_ids
            else [(0, 2**63 - 1)]  # an anonymous profile: all of its events
        )
        for lo, hi in ranges:
            seqs += newest(key_of(ANONYMOUS, anon), lo, min(hi, before), limit)
    return sorted(set(seqs), reverse=True)[:limit]


def anonymous_seqs(
    profile: Profile,
    links_of: Callable[[str], list[Link]],
    between: Callable[[str, int, int], list[int]],
) -> list[int]:
    """The seqs of a profile's anonymous events (what erasing it deletes from the log):
    each anonymousId's events in the ranges that belong to the profile."""
    seqs: list[int] = []
    for anon in profile.anonymous_ids:
        for lo, hi in anonymous_ranges(links_of(anon), profile.user_ids):
            seqs += between(key_of(ANONYMOUS, anon), lo, hi)
    return seqs


def _linked(conn: sqlite3.Connection, user_id: str, profile: Profile | None) -> list[str]:
    """The anonymousIds ``user_id`` has links with ('' for its membership row), sorted:
    each is one of its ``profile``'s (a link adds the anonymousId to the profile, a merge
    keeps both profiles' ids), so they are read by primary key."""
    found: list[str] = []
    anonymous_ids = [] if profile is None else profile.anonymous_ids
    for chunk in _chunks(["", *anonymous_ids]):
        found += (
            a
            for (a,) in conn.execute(
                "SELECT anonymous_id FROM links WHERE user_id = ? AND anonymous_id IN"
                f" ({','.join('?' * len(chunk))})",
                (user_id, *chunk),
            )
        )
    return sorted(found)


def _newest(conn: sqlite3.Connection, key: str, lo: int, hi: int, n: int | None) -> list[int]:
    """The seqs filed under ``key`` in [lo, hi), newest first, at most ``n`` (None: all).

    Rows are read newest first and decoded one at a time until ``n`` are found: an
    identifier's rows never overlap, so their ``last`` falls as their ``first`` does."""
    found: list[int] = []
    rows = conn.execute(
        "SELECT last, seqs FROM timeline WHERE key = ? AND first < ? ORDER BY first DESC",
        (key, hi),
    )
    try:
        for last, blob in rows:
            if last < lo:
                break
            for seq in reversed(orjson.loads(blob)):
                if lo <= seq < hi:
                    found.append(seq)
                    if len(found) == n:
                        return found
        return found
    finally:
        rows.close()


def _drop_seqs(conn: sqlite3.Connection, key: str, gone: set[int]) -> None:
    """Delete the seqs in ``gone`` from ``key``'s timeline rows (rewriting what remains)."""
    rows = conn.execute("SELECT first, seqs FROM timeline WHERE key = ?", (key,)).fetchall()
    for first, blob in rows:
        seqs: list[int] = orjson.loads(blob)
        kept = [s for s in seqs if s not in gone]
        if len(kept) == len(seqs):
            continue
        conn.execute("DELETE FROM timeline WHERE key = ? AND first = ?", (key, first))
        if kept:
            conn.execute(
                "INSERT INTO timeline (key, first, last, seqs) VALUES (?, ?, ?, ?)",
                (key, kept[0], kept[-1], orjson.dumps(kept)),
            )


def _migrate_timeline(conn: sqlite3.Connection) -> None:
    """identity.db version 1 -> 2: the timeline's row per event become rows of runs of
    at most :data:`TIMELINE_RUN` seqs per identifier, in one transaction."""
    with _transaction(conn):
        _script(conn, MIGRATE_TIMELINE)
        run: list[int] = []
        key: str | None = None

        def flush() -> None:
            if run:
                conn.execute(
                    "INSERT INTO timeline (key, first, last, seqs) VALUES (?, ?, ?, ?)",
                    (key, run[0], run[-1], orjson.dumps(run)),
                )
                run.clear()

        for k, seq in conn.execute("SELECT key, seq FROM timeline_v1 ORDER BY key, seq"):
            if k != key or len(run) == TIMELINE_RUN:
                flush()
                key = k
            run.append(seq)
        flush()
        conn.execute("DROP TABLE timeline_v1")
        conn.execute("PRAGMA user_version = 2")


def _chunks(values: Iterable[T]) -> Iterable[list[T]]:
    items = list(values)
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def link_time(text: str) -> datetime:
    """A link's ``linked_at`` (an event timestamp) as a datetime, UTC."""
    # An event without a timestamp cannot exist after normalize; the epoch says "unknown".
    return datetime.fromisoformat(text) if text else datetime.fromtimestamp(0, UTC)
