"""The duckdb destination's loader: the DuckDB file's one connection and everything done
on it (loading batches, schema evolution with a column cache, identity upserts,
erasure, reports' queries), in a process of its own.

Loading a batch is CPU work, part of it Python's (Arrow tables, the Python path's
rows, DuckDB's calls); in eventd's process it took the GIL from the event loop that
serves ingest, and DuckDB's threads counted against eventd's CPU. So the loader
runs in a :class:`eventd.BackgroundWorker` (a spawned process that ``Duckdb``'s
handle starts; ``process=False`` keeps it on a thread, for tests that patch it), at
a lower CPU priority (nice 10, which DuckDB's threads inherit): on a
busy box ingest and delivery keep their CPU and the load lags, catching up when the
box is idle. The destination still answers the worker per event: ``deliver``
returns once the batch is committed here, so the worker's cursor semantics are
unchanged (a batch whose loader died is retried; messageIds already loaded are
skipped).

Each batch's rows become one Arrow table per warehouse table, inserted plainly and,
when a key refuses an id loaded already, again by statements that skip loaded ids
(:func:`skipping_loaded`), in one transaction (a replay or a redelivery adds
nothing). Rows and names come from ``eventd_plugins.warehouse``, shared with
postgres, so both stores hold the same tables, columns and values; steady track
batches are decoded by msgspec into typed structs and loaded column by column
(:mod:`.vectorized`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventd import (
    OK,
    Erasure,
    Event,
    IdentityLink,
    Outcome,
    Permanent,
    Retry,
    lazy_import,
)

from ..warehouse.batches import (
    IDENTITIES,
    IDENTITY_COLUMNS,
    TableRows,
    adjusted_counts,
    columnar,
    first_values,
    grouped,
    identities_ddl,
    log_widened,
    upsert_identities_sql,
    upsert_users_sql,
    widen_sql,
    widenings,
)
from ..warehouse.erasure import delete_statements, tables_sql
from ..warehouse.rows import (
    BIGINT,
    BOOLEAN,
    DOUBLE,
    INFERRED_TYPES,
    STANDARD_TABLES,
    TEXT,
    TIMESTAMP,
    Planned,
    infer_type,
    plan,
    qualified,
    quote,
    schema_name,
    standard_columns,
)
from . import vectorized

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
else:
    # on first use: a configuration without a duckdb destination never pays for them
    duckdb = lazy_import("duckdb")
    pa = lazy_import("pyarrow")

# DuckDB's catalog spells types its own way; the warehouse code speaks PostgreSQL's.
_FROM_CATALOG = {
    "BOOLEAN": BOOLEAN,
    "BIGINT": BIGINT,
    "DOUBLE": DOUBLE,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMP,
    "VARCHAR": TEXT,
}

# DuckDB checkpoints (writes the WAL's rows into the file, compressed) once the WAL
# passes this size; its default, 16 MiB, is ~3 batches of 5,000 tracks here, and each
# checkpoint rewrites the partly filled row group (122,880 rows) of every table it
# touched, so a row was compressed and written ~10 times before its row group filled.
# At 64 MiB: ~3 times, and DuckDB's CPU per event -20 % (docs/benchmarks.md). Each
# COMMIT still writes and fsyncs the WAL (the worker moves the cursor once ``deliver``
# returns, so a committed batch must survive a power loss as the outbox's cursor does
# at ``synchronous = full``). The cost: up to 64 MiB of WAL to replay when the file
# is opened after a crash, and those rows held in DuckDB's buffer pool until the
# checkpoint (evictable to its temporary directory); a clean close checkpoints.
CHECKPOINT_THRESHOLD = "64MiB"

# DuckDB's threads while loading and writing: one. A batch's inserts from Arrow gain
# nothing in wall time from a second thread (the loader is one caller, waiting on each
# statement) and cost CPU to coordinate it: DuckDB's CPU per event with one thread
# 13.8-15.3 us against 15.6-18.6 with two (bench.duckdb_load threads-1/threads-2,
# docs/benchmarks.md), on a box whose two cores ingest and delivery need. Reports'
# queries (:meth:`Loader.query`) get every core for their duration.
LOAD_THREADS = 1

_COLUMNS = (
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position"
)


@functools.cache
def _arrow(column_type: str) -> pa.DataType:
    """The Arrow type a column of this warehouse type is loaded as (text when unknown)."""
    types = {
        BOOLEAN: pa.bool_(),
        BIGINT: pa.int64(),
        DOUBLE: pa.float64(),
        TIMESTAMP: pa.timestamp("us", tz="UTC"),
    }
    return types.get(column_type, pa.string())


def skipping_loaded(insert: str, table: str, target: str) -> str:
    """``insert`` (``INSERT INTO target ... SELECT ... FROM view``, nothing after the
    view's name) made to skip the messageIds ``target`` holds already: by its primary
    key where the table has one (the standard tables), else by an anti-join on its ids.

    Why an event table (one per track event name) has no key: its rows are a batch's
    tracks rows again, loaded in the same transaction as ``tracks``, whose key already
    refuses a messageId loaded before (then the batch is loaded again by these
    statements); a second key on every event row cost ~15 % of the load's CPU
    (bench.reports). The anti-join scans the table's ids, so it runs only then: after
    a redelivery or a replay, never for a steady stream. It is a correlated NOT
    EXISTS, which DuckDB runs as a hash anti-join: ``id NOT IN (SELECT id ...)`` (a
    mark join, NULL-aware) cost ~4x its CPU (5,000 ids against 10,000,000: 2.2-2.6
    against 0.55 CPU-s, docs/benchmarks.md). Files made before keep their keys; both
    forms skip the same rows (an id is never NULL: ``tracks``' key refuses it)."""
    if table in STANDARD_TABLES:
        return f"{insert} ON CONFLICT (id) DO NOTHING"
    return (
        f"{insert} AS eventd_batch WHERE NOT EXISTS"
        f" (SELECT 1 FROM {target} AS eventd_loaded WHERE eventd_loaded.id = eventd_batch.id)"
    )


class RowRefused(Exception):
    """DuckDB refused a row of the batch (the transaction was rolled back)."""


@dataclass
class Delivered:
    """What a batch's load tells the destination: one outcome per event, {reason:
    events} adjusted among those loaded, and whether DuckDB alone flattened its tracks."""

    outcomes: list[Outcome]
    adjusted: dict[str, int]
    vectorized: bool


# The batch as sent to the loader: (source, stored JSON) per event (a tuple pickles in
# a fraction of an Event's time; the loader parses only what its path needs).
Sent = tuple[str, bytes]


class Loader:
    """The file's connection and its writer: one at a time (DuckDB allows one writer
    per process), except :meth:`query`, which runs on a cursor of its own."""

    def __init__(self, path: str, schema: str | None):
        self.path = Path(path)
        self.schema = schema
        self.columns: dict[tuple[str, str], dict[str, str]] = {}
        # per schema, its steady tracks' shapes (learned against ``columns``)
        self.shapes: dict[str, vectorized.Shapes] = {}
        self._con: duckdb.DuckDBPyConnection | None = None

    @staticmethod
    def pid() -> int:
        """The loader's process id (eventd's own with ``process=False``)."""
        return os.getpid()

    @property
    def identities_schema(self) -> str:
        """Where the ``identities`` table lives: the ``schema`` setting, else ``main``."""
        return self.schema or "main"

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(
                str(self.path),
                config={"checkpoint_threshold": CHECKPOINT_THRESHOLD, "threads": LOAD_THREADS},
            )
        return self._con

    def deliver(self, sent: Sequence[Sent]) -> Delivered:
        """Load a batch: its tracks by DuckDB alone where that gives the same rows
        (:meth:`_vectorized`), the rest planned in Python (``warehouse.rows.plan``)."""
        loaded_at = datetime.now(UTC)
        left = self._vectorized(sent, loaded_at)
        fast = left is not None
        indexes = range(len(sent)) if left is None else left
        rest = [Event(i, sent[i][0], 0, body=sent[i][1]) for i in indexes]
        if not rest:
            return Delivered([OK] * len(sent), {}, fast)
        planned = [plan(e.message, self.schema or schema_name(e.source), loaded_at) for e in rest]
        results, counts = adjusted_counts(planned, self._load(planned))
        if left is None:
            return Delivered(results, counts, fast)
        outcomes: list[Outcome] = [OK] * len(sent)  # the tracks loaded from structs
        for i, outcome in zip(left, results, strict=True):
            outcomes[i] = outcome
        return Delivered(outcomes, counts, fast)

    def _vectorized(self, sent: Sequence[Sent], loaded_at: datetime) -> list[int] | None:
        """Load the batch's tracks from the typed structs msgspec decodes them into
        (``vectorized``), when that gives the Python path's rows: the indexes of the
        events left for the Python path (identifies, pages...), or None when nothing
        was written (the whole batch needs the Python path)."""
        schemas = {self.schema or schema_name(source) for source in {s for s, _ in sent}}
        if len(schemas) != 1:
            return None
        schema = schemas.pop()
        known = {t: cols for (s, t), cols in self.columns.items() if s == schema}
        if "tracks" not in known:
            return None  # the Python path makes the tables first
        shapes = self.shapes.setdefault(schema, vectorized.Shapes())
        try:
            load = shapes.load([body for _, body in sent], known, schema, skipping_loaded)
        except vectorized.NotVectorizable:
            return None
        try:
            con = self._connection()
        except duckdb.Error:
            return None
        try:
            for view, table in load.views.items():
                con.register(view, table)
            try:
                self._transaction(con, [(plain, [loaded_at]) for plain, _ in load.inserts])
            except duckdb.ConstraintException:  # loaded already, as in _write
                self._transaction(con, [(once, [loaded_at]) for _, once in load.inserts])
            return load.left
        except duckdb.Error:
            # whatever it was, the Python path decides (and reports a real failure)
            return None
        finally:
            for view in load.views:
                with contextlib.suppress(duckdb.Error):
                    con.unregister(view)

    def _load(self, planned: list[Planned]) -> Sequence[Outcome] | Outcome:
        try:
            con = self._connection()
            try:
                self._write(con, planned)
                return OK
            except RowRefused:
                pass
            # One row was refused: each event on its own, so only the refused ones fail.
            outcomes: list[Outcome] = []
            for p in planned:
                try:
                    self._write(con, [p])
                    outcomes.append(OK)
                except RowRefused as refused:
                    outcomes.append(Permanent(f"DuckDB refused the row: {refused}"))
            return outcomes
        except duckdb.Error as exc:
            # A full disk, a file another process holds, an I/O error: all may pass.
            self.columns.clear()  # whatever DDL was rolled back is read again
            self.shapes.clear()  # learned against those columns
            return Retry(f"DuckDB: {type(exc).__name__}: {exc}")

    def _write(self, con: duckdb.DuckDBPyConnection, planned: list[Planned]) -> None:
        groups = grouped(planned)
        for g in groups:
            self._ensure(con, g)
        statements = [self._statement(g) for g in groups]
        views = [f"eventd_batch_{i}" for i in range(len(statements))]
        # Views are registered outside the transaction: unregistering one inside an
        # aborted transaction fails and would hide why it aborted.
        for view, (_, _, source) in zip(views, statements, strict=True):
            con.register(view, source)
        try:
            try:
                # Plain inserts first: DuckDB's ON CONFLICT costs ~5x a plain insert into
                # a keyed table (bench.reports), and a messageId already loaded is rare
                # (a redelivery after a crash, a replay).
                self._transaction(con, self._sql(views, [plain for plain, _, _ in statements]))
            except duckdb.ConstraintException:
                # Some id is loaded already: the batch again, skipping the loaded ids.
                self._transaction(con, self._sql(views, [once for _, once, _ in statements]))
        # a value DuckDB refuses for a column (a hand-altered type): that event alone fails
        except (duckdb.ConversionException, duckdb.ConstraintException) as exc:
            raise RowRefused(str(exc)) from exc
        finally:
            for view in views:
                con.unregister(view)

    @staticmethod
    def _sql(views: Sequence[str], statements: Sequence[str]) -> list[str]:
        return [sql.replace("{view}", v) for v, sql in zip(views, statements, strict=True)]

    @staticmethod
    def _transaction(
        con: duckdb.DuckDBPyConnection, statements: Sequence[str | tuple[str, Sequence[Any]]]
    ) -> None:
        """Run ``statements`` (SQL, or SQL with its parameters) in one transaction."""
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                sql, params = (statement, None) if isinstance(statement, str) else statement
                con.execute(sql, params)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise

    def _statement(self, g: TableRows) -> tuple[str, str, pa.Table]:
        """A group's plain insert, its insert that skips ids already loaded (both the
        upsert for ``users``), each reading ``{view}``, and its rows."""
        types = self.columns[(g.schema, g.table)]
        columns, arrays = columnar(g, types)
        source = pa.table(
            {c: pa.array(a, _arrow(types[c])) for c, a in zip(columns, arrays, strict=True)}
        )
        picks = ", ".join(
            quote(c) if types[c] in INFERRED_TYPES else f"CAST({quote(c)} AS {types[c]})"
            for c in columns
        )
        select = f"SELECT {picks} FROM {{view}}"
        target = qualified(g.schema, g.table)
        names = ", ".join(quote(c) for c in columns)
        if g.table == "users":
            upsert = upsert_users_sql(target, columns, select)
            return upsert, upsert, source
        plain = f"INSERT INTO {target} ({names}) {select}"
        return plain, skipping_loaded(plain, g.table, target), source

    def _ensure(self, con: duckdb.DuckDBPyConnection, g: TableRows) -> None:
        """Make ``g``'s table hold every column of its rows (the first value seen decides
        a new column's type), each wide enough for their values (``widenings``); the
        cache spares a steady stream DDL."""
        schema, table = g.schema, g.table
        first = first_values(g.rows)
        key = (schema, table)
        known = self.columns.get(key)
        if known is not None and all(c in known for c in first) and not widenings(g, known):
            return
        known = self._read(con, schema, table)
        name = qualified(schema, table)
        standard = standard_columns(table)
        if not known:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            keyed = table in STANDARD_TABLES  # see skipping_loaded()
            columns = ", ".join(
                f"{quote(c)} {t}{' PRIMARY KEY' if keyed and c == 'id' else ''}"
                for c, t in standard.items()
            )
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
            known = self._read(con, schema, table)
        for c, v in first.items():
            if c not in known:
                # DuckDB adds one column per ALTER
                con.execute(
                    f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(c)} "
                    f"{standard.get(c) or infer_type(v)}"
                )
        known = self._read(con, schema, table)
        wider = widenings(g, known)
        for c, t in wider.items():
            con.execute(widen_sql(schema, table, c, t))
            log_widened(schema, table, c, known[c], t)
        if wider:
            # the steady tracks' structs were typed by the old columns: learn them again
            self.shapes.pop(schema, None)
            known = self._read(con, schema, table)
        self.columns[key] = known

    @staticmethod
    def _read(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
        rows = con.execute(_COLUMNS, [schema, table]).fetchall()
        return {str(c): _FROM_CATALOG.get(str(t), str(t).lower()) for c, t in rows}

    def write_identities(self, rows: list[IdentityLink]) -> None:
        """Upsert identity links into ``identities`` (eventd.identity.links' rule)."""
        con = self._connection()
        schema = self.identities_schema
        target = qualified(schema, IDENTITIES)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        con.execute(identities_ddl(target, TIMESTAMP))
        source = pa.table(
            {
                "anonymous_id": pa.array([r.anonymous_id for r in rows], pa.string()),
                "user_id": pa.array([r.user_id for r in rows], pa.string()),
                "profile_id": pa.array([r.profile_id for r in rows], pa.string()),
                "linked_at": pa.array([r.linked_at for r in rows], _arrow(TIMESTAMP)),
            }
        )
        assert list(source.column_names) == list(IDENTITY_COLUMNS)
        view = "eventd_identities"
        con.register(view, source)
        try:
            self._transaction(con, upsert_identities_sql(target, view))
        finally:
            con.unregister(view)

    def query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query (``$1``... parameters) on a cursor of its own, in a session
        whose time zone is UTC (reports' calendar periods are UTC's), with a DuckDB
        thread per core (loads use LOAD_THREADS; calls come one at a time)."""
        con = self._connection()
        cursor = con.cursor()
        try:
            con.execute(f"SET threads = {os.cpu_count() or 1}")  # the database's, not a session's
            cursor.execute("SET TimeZone = 'UTC'")
            return cursor.execute(sql, params).fetchall()
        finally:
            cursor.close()
            con.execute(f"SET threads = {LOAD_THREADS}")

    def delete_user(self, erasure: Erasure) -> None:
        """Delete the person's rows from every table of eventd's schemas, in one
        transaction (``eventd_plugins.warehouse.erasure``'s rule)."""
        con = self._connection()
        # Read outside the transaction: this thread is the file's only writer.
        sql, params = tables_sql(self.schema)
        tables = con.execute(sql, params).fetchall()
        deletes = delete_statements(tables, erasure.user_ids, erasure.anonymous_ids)
        self._transaction(con, deletes)

    def close(self) -> None:
        """Close the file (a later call opens it again)."""
        if self._con is not None:
            self._con.close()
            self._con = None
        self.columns.clear()  # the file may change while closed
        self.shapes.clear()


# -- the loader's process ------------------------------------------------------------

_loader: Loader | None = None


def start_process(path: str, schema: str | None) -> None:
    """The loader process's setup (an :class:`eventd.BackgroundWorker`: nice 10 before
    DuckDB starts a thread, which inherit it; signals left to its parent, which ends it
    after its last batch; its parent's death followed): the :class:`Loader`, which
    opens the file on first use."""
    global _loader
    _loader = Loader(path, schema)


def call(method: str, *args: Any) -> Any:
    """Run one of the :class:`Loader`'s public methods in the loader's process."""
    assert _loader is not None, "duckdb loader not started"
    return getattr(_loader, method)(*args)
