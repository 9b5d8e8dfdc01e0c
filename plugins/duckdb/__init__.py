"""The ``duckdb`` destination: an embedded analytics store, one DuckDB file laid out the
way the postgres destination lays out its warehouse (Segment's layout; see README.md).

Owns the destination's contract (settings, deliver, identity links, erasure, the
reports' queries) and the handle on its loader (:mod:`.loader`), which holds the
file and does the work in a process of its own at a lower CPU priority, off eventd's
event loop and GIL. DuckDB locks its file, so reports go through this instance's
:meth:`Duckdb.query`, which the loader runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any

import aiohttp

from eventd import (
    OK,
    BackgroundWorker,
    DeletionOutcome,
    Destination,
    Erasure,
    Event,
    IdentityLink,
    Outcome,
    Retry,
    hookimpl,
    lazy_import,
)

from ..warehouse.batches import SCHEMA_SETTING, identity_rows
from ..warehouse.rows import column_name
from . import loader
from .loader import Delivered, Loader

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_import("duckdb")


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
    # The file is on this node: on the cluster every node loads every event into its
    # own file, so reports answer the same on any node (docs/scaling.md).
    node_local = True

    dialect = "duckdb"

    def __init__(
        self,
        name: str,
        settings: Mapping[str, Any],
        session: aiohttp.ClientSession,
        *,
        process: bool = True,
    ):
        """``process=False`` runs the loader on a thread of this process (tests that
        patch it: :attr:`loader` is then the live one)."""
        super().__init__(name, settings, session)
        self.schema: str | None = self.settings.get("schema")
        self.max_batch_events = int(self.settings["max_batch_events"])
        self.vectorized_batches = 0  # batches DuckDB loaded alone (tests, bench.reports)
        self.process = process
        self.loader = Loader(str(self.settings["path"]), self.schema)
        self.path = self.loader.path
        # one worker: batches and identity upserts never interleave their DDL
        self._worker = BackgroundWorker(
            "the duckdb load",
            loader.start_process if process else None,
            (str(self.loader.path), self.schema),
            teardown=self._method("close"),
            process=process,
        )

    column_name = staticmethod(column_name)

    @property
    def identities_schema(self) -> str:
        """Where the ``identities`` table lives: the ``schema`` setting, else ``main``."""
        return self.loader.identities_schema

    async def _call(self, method: str, *args: Any) -> Any:
        """Run the loader's ``method`` (in its process, or on its thread). Raises what it
        raised, or BrokenExecutor when the loader died (killed, out of memory): the next
        call starts another, which reopens the file at its last commit."""
        return await self._worker.call(self._method(method), *args)

    def _method(self, method: str) -> Any:
        if self.process:
            return functools.partial(loader.call, method)
        return getattr(self.loader, method)

    async def loader_pid(self) -> int:
        """The loader's process id, started if it was not (its CPU is not eventd's)."""
        pid: int = await self._call("pid")
        return pid

    # -- delivery ---------------------------------------------------------------

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome] | Outcome:
        sent = [(e.source, e.body) for e in batch]
        try:
            done: Delivered = await self._call("deliver", sent)
        except BrokenExecutor as exc:
            # Whatever the dead loader committed holds; the batch comes again and the
            # messageIds it loaded are skipped.
            return Retry(f"the duckdb loader process ended: {exc}")
        self.vectorized_batches += done.vectorized
        self.count_adjusted(done.adjusted)
        return done.outcomes

    # -- the store reports read, and the identity graph writes ------------------------

    async def write_identities(self, links: Sequence[IdentityLink]) -> None:
        """Upsert identity links into ``identities`` (eventd.identity.links: a repeated
        (anonymous_id, user_id) keeps its first linked_at, takes the new profile_id).
        Raises duckdb.Error (or BrokenExecutor); the caller (the identity graph) retries."""
        rows = identity_rows(links)
        if rows:
            await self._call("write_identities", rows)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``$1``... parameters), in a session whose time zone
        is UTC (reports' calendar periods are UTC's), run by the loader (it holds the
        file, and its DuckDB threads run at its priority)."""
        rows: list[tuple[Any, ...]] = await self._call("query", sql, list(params))
        return rows

    # -- erasure ----------------------------------------------------------------------

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        """Delete the person's rows from every table of eventd's schemas in the file, in
        one transaction, by the rule of ``eventd_plugins.warehouse.erasure`` (event
        tables, ``identities``, ``aliases`` by previous_id, ``users`` by id)."""
        try:
            await self._call("delete_user", erasure)
            return OK
        except (duckdb.Error, BrokenExecutor) as exc:  # a full disk, a held file: may pass
            return Retry(f"DuckDB: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Close the file and end the loader (a later call starts it again; a loader
        killed already left the file at its last commit). Cut short (a stop's bound,
        eventd/app.py), the loader is killed on the way out: the process's exit would
        wait for its call in hand otherwise (issue 14); its file keeps its last commit."""
        closed = False
        try:
            await self._worker.close()
            closed = True
        finally:
            if not closed:
                self._worker.kill()


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return [Duckdb]
