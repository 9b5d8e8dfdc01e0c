"""Suppressed users: whose events eventd no longer takes, and the erasure of what it holds.

Like Segment's user suppression and deletion (GDPR's rights to object and to
erasure), by ``userId``, for every source:

- suppress: from now on ingest acknowledges the user's events without storing
  them, and the dispatcher does not deliver the ones still waiting in the log
  (counted as skipped);
- erase (with suppress): the stored events and dead letters of the user are
  deleted too. The newest event of the log is never deleted (its seq would be
  handed out again, see retention), so a user whose event is the newest is
  erased once another event has arrived: each retention sweep finishes
  pending erasures.

Deleting what destinations already received is the destinations' business
(their own deletion APIs); this module only says what eventd held.
The set of suppressed ids lives in memory, read at start, so the ingest check
costs one set lookup per message, and nothing while the set is empty.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import structlog

from eventd.outbox import Outbox, fetch, iso_ms, now_ms

log = structlog.get_logger("eventd.suppressions")

DELETE_BATCH = 5000
SELECT_RECORD = "SELECT user_id, created_at, erase, erased_events, erased_at FROM suppressions"


class Suppressions:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        # Read by ingest and the dispatcher; changed only here, in place.
        self.user_ids: set[str] = set()
        self._reader: aiosqlite.Connection | None = None
        # Called with the userId before its stored events are erased (eventd/privacy/
        # forwards the erasure to destinations and reads the person's events first).
        self.before_erase: list[Callable[[str], Awaitable[None]]] = []

    async def load(self) -> None:
        self._reader = await self.outbox.reader()
        rows = await fetch(self._reader, "SELECT user_id FROM suppressions")
        self.user_ids.update(r[0] for r in rows)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def list(self) -> list[dict[str, Any]]:
        assert self._reader is not None
        rows = await fetch(self._reader, f"{SELECT_RECORD} ORDER BY created_at, user_id")
        return [_record(r) for r in rows]

    async def get(self, user_id: str) -> dict[str, Any] | None:
        assert self._reader is not None
        rows = await fetch(self._reader, f"{SELECT_RECORD} WHERE user_id = ?", (user_id,))
        return _record(rows[0]) if rows else None

    async def suppress(self, user_id: str, erase: bool) -> dict[str, Any]:
        """Suppress ``user_id`` (again: ``erase`` can be turned on, never off); with
        ``erase``, delete what is stored of it now. Returns the suppression's record."""
        # In memory first: from here on ingest drops the user's events.
        self.user_ids.add(user_id)
        await self.outbox.execute(
            "INSERT INTO suppressions (user_id, created_at, erase) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET erase = max(erase, excluded.erase),"
            " erased_at = CASE WHEN excluded.erase > erase THEN NULL ELSE erased_at END",
            [(user_id, now_ms(), int(erase))],
        )
        log.info("user suppressed", erase=erase)  # the id itself is personal data: not logged
        if erase:
            for hook in self.before_erase:
                await hook(user_id)
            await self.erase(user_id)
        record = await self.get(user_id)
        assert record is not None
        return record

    async def unsuppress(self, user_id: str) -> bool:
        """Take the user's events again from now on. What was erased stays erased."""
        removed = await self.outbox.execute(
            "DELETE FROM suppressions WHERE user_id = ?", [(user_id,)]
        )
        self.user_ids.discard(user_id)
        if removed:
            log.info("user no longer suppressed")
        return removed > 0

    async def erase(self, user_id: str) -> bool:
        """Delete the user's stored events and dead letters; True when none is left."""
        assert self._reader is not None
        # Every event of the user is committed by now: ingest checks the set and queues
        # its write without awaiting in between, so what passed the check before the
        # user was added was queued before the suppression's own write, and committed.
        newest = self.outbox.last_seq
        # Found with the reader (one scan, off the writer), deleted by seq (fast, batched).
        found = [
            r[0]
            for r in await fetch(
                self._reader, "SELECT seq FROM events WHERE user_id = ?", (user_id,)
            )
        ]
        seqs = [s for s in found if s < newest]
        erased = 0
        for i in range(0, len(seqs), DELETE_BATCH):
            chunk = seqs[i : i + DELETE_BATCH]
            erased += await self.outbox.execute(
                "DELETE FROM events WHERE seq = ?", [(s,) for s in chunk]
            )
        dead = [
            r[0]
            for r in await fetch(
                self._reader,
                "SELECT id FROM dead_letters"
                " WHERE json_extract(CAST(body AS TEXT), '$.userId') = ?",
                (user_id,),
            )
        ]
        if dead:
            await self.outbox.execute("DELETE FROM dead_letters WHERE id = ?", [(d,) for d in dead])
        done = len(seqs) == len(found)  # else the newest event is theirs: kept for now
        await self.outbox.execute(
            "UPDATE suppressions SET erased_events = erased_events + ?,"
            " erased_at = CASE WHEN ? THEN ? ELSE NULL END WHERE user_id = ?",
            [(erased, done, now_ms(), user_id)],
        )
        if erased or dead:
            await self.outbox.checkpoint()  # and out of the WAL
        log.info(
            "user erased" if done else "user partly erased (their event is the newest)",
            events=erased,
            dead_letters=len(dead),
        )
        return done

    async def erase_pending(self) -> int:
        """Finish erasures that could not finish (retention calls this every sweep)."""
        assert self._reader is not None
        rows = await fetch(
            self._reader, "SELECT user_id FROM suppressions WHERE erase = 1 AND erased_at IS NULL"
        )
        finished = 0
        for (user_id,) in rows:
            finished += await self.erase(user_id)
        return finished


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    user_id, created_at, erase, erased_events, erased_at = row
    return {
        "user_id": user_id,
        "created_at": iso_ms(created_at),
        "erase": bool(erase),
        "erased_events": erased_events,
        "erased_at": iso_ms(erased_at),
    }
