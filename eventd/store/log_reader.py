"""Reading the SQLite outbox's log from another process, read-only (its SQL).

The identity writer (eventd/identity/writer.py, a process of its own) applies the
log to the graph page by page. Reading those pages in eventd's process and pickling
them over cost eventd's event loop as much as ingest itself (issue 15: delivery to
one webhook 77 K -> 42 K events/s with the graph on). So the writer reads them
itself, through a connection of its own: WAL lets a reader in another process see
every committed transaction beside the outbox's writer, never a half-written one.

:meth:`Store.log_source <eventd.store.base.Store.log_source>` hands out a
:class:`SqliteLogSource` (a path: picklable, so it crosses to the writer process);
:meth:`SqliteLogSource.open` gives a :class:`SqliteLogReader` there.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from eventd.store.base import LogReader

# The page: events past the consumer's cursor, up to the newest seq its caller knows
# committed (so a page never runs ahead of what eventd's own process has seen stored).
READ_PAGE = "SELECT seq, body FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
# The same page as one row: its seqs (a JSON array) and its bodies joined by newlines.
# Read row by row, the sqlite3 module releases and takes the GIL 4 times per event (the
# step, the row's column count and each column's type) and builds a bytes object per
# body: ~4,000 instructions per event (callgrind, issue 15). Both aggregates take the
# subquery's rows in the same (seq) order; the writer checks the seqs ascend.
READ_LINES = (
    f"SELECT json_group_array(seq), CAST(group_concat(body, char(10)) AS BLOB) FROM ({READ_PAGE})"
)


@dataclass(frozen=True)
class SqliteLogSource:
    """Where the outbox is: ``path``, eventd.db."""

    path: str

    def open(self) -> LogReader:
        """A read-only connection to the outbox. Raises sqlite3.Error when it cannot open."""
        return SqliteLogReader(self.path)


class SqliteLogReader:
    """A read-only connection to eventd.db (``mode=ro``, ``query_only``): it never writes,
    so it cannot hold the outbox's write lock or grow its file (a full disk)."""

    def __init__(self, path: str) -> None:
        # A URI (for mode=ro) with the path percent-encoded: a '?' or '#' in a directory's
        # name would otherwise end the path.
        uri = f"{Path(path).absolute().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def page(self, after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (seq, body) of the events with ``after`` < seq <= ``upto``, in
        seq order (one read transaction: a consistent snapshot)."""
        return self._conn.execute(READ_PAGE, (after, upto, limit)).fetchall()

    def lines(self, after: int, upto: int, limit: int) -> tuple[list[int], bytes]:
        """:meth:`page` as (seqs, bodies joined by newlines), read in one row."""
        seqs, joined = self._conn.execute(READ_LINES, (after, upto, limit)).fetchone()
        return orjson.loads(seqs), joined or b""

    def close(self) -> None:
        self._conn.close()
