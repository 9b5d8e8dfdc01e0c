"""The SQL of data audits: stored events read page by page, in seq order.

Reads only (a reader connection): what is stored is what retention has kept, so
an audit covers ``storage.retention`` at most.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiosqlite

from eventd.outbox import fetch

PAGE = 5000


async def stored_events(
    reader: aiosqlite.Connection, source: str | None, since_ms: int | None
) -> AsyncIterator[list[tuple[str, int, bytes]]]:
    """Pages of (source, received_at ms, body JSON) of the events of ``source`` (every
    source when None) received at or after ``since_ms`` (all when None)."""
    clauses: list[str] = ["seq > ?"]
    args: list[str | int] = []
    if source is not None:
        clauses.append("source = ?")
        args.append(source)
    if since_ms is not None:
        clauses.append("received_at >= ?")
        args.append(since_ms)
    sql = (
        f"SELECT seq, source, received_at, body FROM events WHERE {' AND '.join(clauses)}"
        f" ORDER BY seq LIMIT {PAGE}"
    )
    after = 0
    while True:
        rows = await fetch(reader, sql, (after, *args))
        if not rows:
            return
        after = rows[-1][0]
        yield [(src, at, body) for _, src, at, body in rows]
