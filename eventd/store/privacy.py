"""The SQL of erasures forwarded to destinations: the ``deletions`` table (migration 3
in ``eventd/outbox.py``) and the lookup of a person's stored events.

One row per (suppressed user, destination); ``state`` is one of ``requested``,
``done``, ``failed``, ``unsupported``. Writes go through the outbox's writer,
reads through the caller's reader connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from eventd.outbox import Outbox, fetch, now_ms

REQUESTED, DONE, FAILED, UNSUPPORTED = "requested", "done", "failed", "unsupported"
MAX_REASON_CHARS = 1000
STATES = (REQUESTED, DONE, FAILED, UNSUPPORTED)

_COLUMNS = (
    "user_id, destination, type, state, erasure, attempts, reason, requested_at, updated_at,"
    " next_attempt_at"
)
# A new request; asked again, only a failed one starts over, with the ids asked for now
# (the caller merges them with those of the first request); done, unsupported and one
# still being retried stay as they are.
_REQUEST = (
    f"INSERT INTO deletions ({_COLUMNS}) VALUES (?, ?, ?, 'requested', ?, 0, NULL, ?, ?, NULL)"
    " ON CONFLICT (user_id, destination) DO UPDATE SET state = 'requested', attempts = 0,"
    " erasure = excluded.erasure, reason = NULL, requested_at = excluded.requested_at,"
    " updated_at = excluded.updated_at, next_attempt_at = NULL WHERE deletions.state = 'failed'"
)
_SAVE = (
    "UPDATE deletions SET state = ?, attempts = ?, reason = ?, next_attempt_at = ?,"
    " updated_at = ? WHERE user_id = ? AND destination = ?"
)


@dataclass(frozen=True)
class Deletion:
    """One row of ``deletions``; times in unix ms."""

    user_id: str
    destination: str
    type: str
    state: str
    erasure: bytes  # JSON, see eventd.privacy.erasures.encode
    attempts: int
    reason: str | None
    requested_at: int
    updated_at: int
    next_attempt_at: int | None


async def user_events(
    reader: aiosqlite.Connection, user_ids: Sequence[str]
) -> list[tuple[int, str, int, str | None]]:
    """(seq, source, received_at, anonymous_id) of every stored event of these userIds,
    in seq order (one scan of the log: there is no index on user_id, as for erase)."""
    marks = ", ".join("?" * len(user_ids))
    return await fetch(
        reader,
        "SELECT seq, source, received_at, anonymous_id FROM events"
        f" WHERE user_id IN ({marks}) ORDER BY seq",
        tuple(user_ids),
    )


async def request(
    outbox: Outbox, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
) -> None:
    """Record a deletion request of ``user_id`` for each (destination, type)."""
    at = now_ms()
    await outbox.execute(_REQUEST, [(user_id, d, t, erasure, at, at) for d, t in destinations])


async def save(
    outbox: Outbox,
    user_id: str,
    destination: str,
    state: str,
    attempts: int,
    reason: str | None,
    next_attempt_at: int | None = None,
) -> None:
    """Record how a request stands; ``reason`` is cut to MAX_REASON_CHARS."""
    reason = reason[:MAX_REASON_CHARS] if reason is not None else None
    await outbox.execute(
        _SAVE, [(state, attempts, reason, next_attempt_at, now_ms(), user_id, destination)]
    )


async def pending(reader: aiosqlite.Connection) -> list[Deletion]:
    """Every request not finished yet (what a restart resumes)."""
    rows = await fetch(
        reader, f"SELECT {_COLUMNS} FROM deletions WHERE state = 'requested' ORDER BY requested_at"
    )
    return [Deletion(*r) for r in rows]


async def of_user(reader: aiosqlite.Connection, user_id: str) -> list[Deletion]:
    rows = await fetch(
        reader,
        f"SELECT {_COLUMNS} FROM deletions WHERE user_id = ? ORDER BY destination",
        (user_id,),
    )
    return [Deletion(*r) for r in rows]
