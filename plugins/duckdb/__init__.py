"""The ``duckdb`` destination: an embedded analytics store, one DuckDB file laid out the
way the postgres destination lays out its warehouse (Segment's layout; see README.md).

Owns the DuckDB connection (opened once by the daemon: DuckDB locks its file, so
reports go through this instance's :meth:`Duckdb.query`), schema evolution with a
column cache, and loading: each batch's rows become one Arrow table per warehouse
table, inserted with ``ON CONFLICT (id) DO NOTHING`` in one transaction (a replay or
a redelivery adds nothing). Rows and names come from ``eventd_plugins.warehouse``,
shared with postgres, so both stores hold the same tables, columns and values.

DuckDB's Python calls block, so they run on one writer thread (DuckDB allows one
writer per process; its reads run beside it on cursors of their own). Loading is
background work: the writer thread runs at a lower CPU priority
(``eventd.background_priority``: nice 10), and opens the file, so DuckDB's own
worker threads, started then, inherit it: on a busy box ingest and delivery keep their CPU (and the
event loop the GIL, which DuckDB releases while it executes) and the load lags,
catching up when the box is idle, rather than halving ingest (bench
``ingest-duckdb``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from eventd import (
    OK,
    DeletionOutcome,
    Destination,
    Erasure,
    Event,
    IdentityLink,
    Outcome,
    Permanent,
    Retry,
    background_priority,
    hookimpl,
    lazy_import,
)

from ..warehouse.batches import (
    IDENTITIES,
    IDENTITY_COLUMNS,
    SCHEMA_SETTING,
    TableRows,
    adjusted_counts,
    columnar,
    first_values,
    grouped,
    identities_ddl,
    identity_rows,
    upsert_identities_sql,
    upsert_users_sql,
)
from ..warehouse.erasure import delete_statements, tables_sql
from ..warehouse.rows import (
    BIGINT,
    BOOLEAN,
    DOUBLE,
    INFERRED_TYPES,
    TEXT,
    TIMESTAMP,
    Planned,
    column_name,
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
    import pyarrow.compute as pc
else:
    # on first use: a configuration without a duckdb destination never pays for them
    duckdb = lazy_import("duckdb")
    pa = lazy_import("pyarrow")
    pc = lazy_import("pyarrow.compute")

# DuckDB's catalog spells types its own way; the warehouse code speaks PostgreSQL's.
_FROM_CATALOG = {
    "BOOLEAN": BOOLEAN,
    "BIGINT": BIGINT,
    "DOUBLE": DOUBLE,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMP,
    "VARCHAR": TEXT,
}


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


log = logging.getLogger(__name__)

_COLUMNS = (
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position"
)


class RowRefused(Exception):
    """DuckDB refused a row of the batch (the transaction was rolled back)."""


class Duckdb(Destination):
    type_name = "duckdb"
    description = "load events into a DuckDB file (an embedded analytics store reports read)"
    settings_schema = {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "the DuckDB file (created with its directory)",
            },
            "schema": SCHEMA_SETTING,
            "max_batch_events": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100000,
                "default": 10000,
                "description": "events per transaction at most",
            },
        },
    }
    max_batch_events = 10000
    max_batch_bytes = 50_000_000

    dialect = "duckdb"

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        self.path = Path(str(self.settings["path"]))
        self.schema: str | None = self.settings.get("schema")
        self.max_batch_events = int(self.settings["max_batch_events"])
        self.columns: dict[tuple[str, str], dict[str, str]] = {}
        self.vectorized_batches = 0  # batches DuckDB loaded alone (tests, bench.reports)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._open_lock = threading.Lock()
        # one writer thread: batches and identity upserts never interleave their DDL
        # at a lower priority; the file is opened on it (see the module docstring)
        self._writer = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"duckdb-{name}",
            initializer=functools.partial(background_priority, "the duckdb load"),
        )

    column_name = staticmethod(column_name)

    @property
    def identities_schema(self) -> str:
        """Where the ``identities`` table lives: the ``schema`` setting, else ``main``."""
        return self.schema or "main"

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._open_lock:
            if self._con is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._con = duckdb.connect(str(self.path))
            return self._con

    async def _write_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    # -- delivery ---------------------------------------------------------------

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome] | Outcome:
        results: list[Outcome]
        results, counts = await self._write_thread(self._deliver, batch)
        self.count_adjusted(counts)
        return results

    def _deliver(self, batch: Sequence[Event]) -> tuple[list[Outcome], dict[str, int]]:
        # All of it runs on the writer thread: a batch's work stays off the event loop
        # that serves ingest.
        loaded_at = datetime.now(UTC)
        left = self._vectorized(batch, loaded_at)
        if left is not None:
            self.vectorized_batches += 1
        rest = list(batch) if left is None else [batch[i] for i in left]
        if not rest:
            return [OK] * len(batch), {}
        planned = [plan(e.message, self.schema or schema_name(e.source), loaded_at) for e in rest]
        results, counts = adjusted_counts(planned, self._load(planned))
        if left is None:
            return results, counts
        outcomes: list[Outcome] = [OK] * len(batch)  # the tracks DuckDB loaded
        for i, outcome in zip(left, results, strict=True):
            outcomes[i] = outcome
        return outcomes, counts

    def _vectorized(self, batch: Sequence[Event], loaded_at: datetime) -> list[int] | None:
        """Load the batch's tracks by DuckDB alone (``vectorized``: ~3.5x the Python
        path per CPU-second) when that gives the same rows: the indexes of the events
        left for the Python path (identifies, pages...), or None when nothing was
        written (the whole batch needs the Python path)."""
        schemas = {self.schema or schema_name(e.source) for e in batch}
        if len(schemas) != 1:
            return None
        schema = schemas.pop()
        known = {t: cols for (s, t), cols in self.columns.items() if s == schema}
        if "tracks" not in known:
            return None  # the Python path makes the tables first
        view = "eventd_bodies"
        try:
            con = self._connection()
            table = pa.table(
                {
                    "i": pa.array(range(len(batch)), pa.int64()),
                    "body": pa.array([e.body for e in batch], pa.binary()),
                }
            )
            con.register(view, table)
        except duckdb.Error:
            return None
        try:
            left = vectorized.not_tracks(con, view)
            if len(left) == len(batch):
                return None
            if left:  # only the tracks: the rest is the Python path's
                con.unregister(view)
                keep = pc.invert(pc.is_in(table["i"], pa.array(left, pa.int64())))
                con.register(view, table.filter(keep))
            found = vectorized.survey(con, view, len(batch) - len(left), known)
            read, passed, inserts, rows = vectorized.statements(found, schema, view)
            con.execute(read, [loaded_at])
            try:
                if con.execute(passed).fetchall() != [(True,)]:
                    return None
                try:
                    self._transaction(con, inserts)
                except duckdb.ConstraintException:  # loaded already, as in _write
                    self._transaction(con, [f"{i} ON CONFLICT (id) DO NOTHING" for i in inserts])
            finally:
                con.execute(f"DROP TABLE IF EXISTS {rows}")
            return left
        except (vectorized.NotVectorizable, duckdb.Error):
            # whatever it was, the Python path decides (and reports a real failure)
            return None
        finally:
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
            return Retry(f"DuckDB: {type(exc).__name__}: {exc}")

    def _write(self, con: duckdb.DuckDBPyConnection, planned: list[Planned]) -> None:
        groups = grouped(planned)
        for g in groups:
            self._ensure(con, g.schema, g.table, first_values(g.rows))
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
        columns, arrays = columnar(g.rows, types, g.adjusted)
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
        return plain, f"{plain} ON CONFLICT (id) DO NOTHING", source

    def _ensure(
        self,
        con: duckdb.DuckDBPyConnection,
        schema: str,
        table: str,
        first: Mapping[str, Any],
    ) -> None:
        """Make ``schema.table`` hold every column of ``first`` (column → the first value
        seen, which decides a new column's type); the cache spares a steady stream DDL."""
        key = (schema, table)
        known = self.columns.get(key)
        if known is not None and all(c in known for c in first):
            return
        known = self._read(con, schema, table)
        name = qualified(schema, table)
        standard = standard_columns(table)
        if not known:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            columns = ", ".join(
                f"{quote(c)} {t}{' PRIMARY KEY' if c == 'id' else ''}" for c, t in standard.items()
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
        self.columns[key] = self._read(con, schema, table)

    @staticmethod
    def _read(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
        rows = con.execute(_COLUMNS, [schema, table]).fetchall()
        return {str(c): _FROM_CATALOG.get(str(t), str(t).lower()) for c, t in rows}

    # -- the store reports read, and the identity graph writes ------------------------

    async def write_identities(self, links: Sequence[IdentityLink]) -> None:
        """Upsert identity links into ``identities`` (eventd.identity.links: a repeated
        (anonymous_id, user_id) keeps its first linked_at, takes the new profile_id).
        Raises duckdb.Error; the caller (the identity graph) retries."""
        rows = identity_rows(links)
        if rows:
            await self._write_thread(self._write_identities, rows)

    def _write_identities(self, rows: list[IdentityLink]) -> None:
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

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``$1``... parameters) on a cursor of its own, in a
        session whose time zone is UTC (reports' calendar periods are UTC's)."""
        # Opened by the writer thread if not yet, so DuckDB's threads run at its priority.
        await self._write_thread(self._connection)
        return await asyncio.to_thread(self._query, sql, list(params))

    def _query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        cursor = self._connection().cursor()
        try:
            cursor.execute("SET TimeZone = 'UTC'")
            return cursor.execute(sql, params).fetchall()
        finally:
            cursor.close()

    # -- erasure ----------------------------------------------------------------------

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        """Delete the person's rows from every table of eventd's schemas in the file, in
        one transaction on the writer thread, by the rule of
        ``eventd_plugins.warehouse.erasure`` (event tables, ``identities``, ``aliases``
        by previous_id, ``users`` by id)."""
        try:
            await self._write_thread(self._delete_user, erasure)
            return OK
        except duckdb.Error as exc:  # a file another process holds, a full disk: may pass
            return Retry(f"DuckDB: {type(exc).__name__}: {exc}")

    def _delete_user(self, erasure: Erasure) -> None:
        con = self._connection()
        # Read outside the transaction: this thread is the file's only writer.
        sql, params = tables_sql(self.schema)
        tables = con.execute(sql, params).fetchall()
        deletes = delete_statements(tables, erasure.user_ids, erasure.anonymous_ids)
        self._transaction(con, deletes)

    async def close(self) -> None:
        """Close the file (a later call opens it again); the idle thread stays."""
        await self._write_thread(self._close)

    def _close(self) -> None:
        with self._open_lock:
            if self._con is not None:
                self._con.close()
                self._con = None
            self.columns.clear()  # the file may change while closed


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return [Duckdb]
