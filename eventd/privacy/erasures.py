"""Erasures forwarded to destinations: each suppressed-and-erased person's deletion
asked of every configured destination, retried like delivery, persisted so a
restart resumes.

When ``eventd suppressions add USER --erase`` (or ``POST /admin/suppressions``
with ``erase``) runs, :meth:`Erasures.request` is called *before* eventd erases
its own copy, so the person's anonymousIds and event locations can still be read
from the log. Per destination, a task calls the plugin's ``delete_user``::

    Ok ............. done
    Unsupported .... unsupported, with what the operator must do by hand
    Permanent ...... failed, with the reason (``suppressions add --erase`` again
                     asks a failed destination again)
    Retry .......... requested: waits by the destination's own backoff policy
                     (the dispatcher's, honouring Retry-After), through its rate
                     limit; past its ``retry_max_age`` since asked, failed

State lives in the ``deletions`` table (SQL in :mod:`eventd.store.privacy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson
import structlog

from eventd.destination import Erasure, Ok, Permanent, Retry, StoredRef, Unsupported
from eventd.outbox import iso_ms, now_ms
from eventd.store import privacy as sql

if TYPE_CHECKING:
    from eventd.app import Runtime
    from eventd.dispatcher import Worker

log = structlog.get_logger("eventd.privacy")


def encode(erasure: Erasure) -> bytes:
    return orjson.dumps(
        {
            "user_ids": erasure.user_ids,
            "anonymous_ids": erasure.anonymous_ids,
            "events": [(e.seq, e.source, e.received_at) for e in erasure.events],
        }
    )


def decode(data: bytes) -> Erasure:
    d = orjson.loads(data)
    return Erasure(
        tuple(d["user_ids"]),
        tuple(d["anonymous_ids"]),
        tuple(StoredRef(*e) for e in d["events"]),
    )


class Erasures:
    """The ``privacy`` service: runs every deletion request until it is finished."""

    name = "privacy"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._reader: aiosqlite.Connection | None = None
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        # Asked before eventd erases its own copy of the person's events.
        runtime.suppressions.before_erase.append(self.request)

    @property
    def workers(self) -> dict[str, Worker]:
        return self.runtime.dispatcher.workers

    async def start(self) -> None:
        self._reader = await self.runtime.outbox.reader()
        for row in await sql.pending(self._reader):
            if row.destination in self.workers:
                self._spawn(row.user_id, row.destination, decode(row.erasure), row)
            else:
                log.warning("deletion waits for its destination", destination=row.destination)

    async def stop(self) -> None:
        """Cancel what runs: a request cut short stays ``requested`` and is asked again
        at the next start (every delete_user is idempotent)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def request(self, user_id: str, user_ids: Sequence[str] = ()) -> None:
        """Ask every configured destination to delete ``user_id`` (and ``user_ids``, the
        other userIds of their profile), with the anonymousIds and events stored of them."""
        assert self._reader is not None
        ids = tuple(dict.fromkeys([user_id, *user_ids]))
        rows = await sql.user_events(self._reader, ids)
        known = await sql.of_user(self._reader, user_id)
        erasure = Erasure(
            ids,
            tuple(dict.fromkeys(a for *_, a in rows if a)),
            tuple(StoredRef(seq, source, at) for seq, source, at, _ in rows),
        )
        if known:  # asked before: its events are erased by now, keep what was found then
            before = decode(known[0].erasure)
            erasure = Erasure(
                tuple(dict.fromkeys(before.user_ids + erasure.user_ids)),
                tuple(dict.fromkeys(before.anonymous_ids + erasure.anonymous_ids)),
                before.events + erasure.events,
            )
        targets = [(name, w.config.type) for name, w in sorted(self.workers.items())]
        await sql.request(self.runtime.outbox, user_id, targets, encode(erasure))
        for row in await sql.of_user(self._reader, user_id):
            runs = (user_id, row.destination) in self._tasks
            if row.state == sql.REQUESTED and not runs and row.destination in self.workers:
                self._spawn(user_id, row.destination, decode(row.erasure), row)
        log.info("deletion requested", destinations=len(targets))  # the id is personal data

    def _spawn(self, user_id: str, destination: str, erasure: Erasure, row: sql.Deletion) -> None:
        key = (user_id, destination)
        task = asyncio.create_task(self._run(user_id, destination, erasure, row))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _run(
        self, user_id: str, destination: str, erasure: Erasure, row: sql.Deletion
    ) -> None:
        worker = self.workers[destination]
        attempts = row.attempts
        if row.next_attempt_at is not None:  # resumed after a restart, mid-backoff
            await asyncio.sleep(max(0.0, (row.next_attempt_at - now_ms()) / 1000))
        while True:
            wait = worker.limiter.reserve(1)
            if wait:
                await asyncio.sleep(wait)
            attempts += 1
            try:
                outcome = await worker.destination.delete_user(erasure)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a plugin bug must not end the task: retry, loudly
                log.exception("delete_user raised", destination=destination)
                outcome = Retry(f"delete_user raised {type(exc).__name__}: {exc}")
            if isinstance(outcome, Retry) and (
                now_ms() - row.requested_at >= worker.config.retry_max_age * 1000
            ):
                outcome = Permanent(f"retry_max_age passed; last: {outcome.reason}")
            if isinstance(outcome, Retry):
                # The dispatcher's own policy: exponential with jitter, or Retry-After.
                delay = worker._backoff(attempts, outcome.after)
                await sql.save(
                    self.runtime.outbox,
                    user_id,
                    destination,
                    sql.REQUESTED,
                    attempts,
                    outcome.reason,
                    now_ms() + int(delay * 1000),
                )
                self._changed_now()
                await asyncio.sleep(delay)
                continue
            state, reason = _final(outcome)
            await sql.save(self.runtime.outbox, user_id, destination, state, attempts, reason)
            self._changed_now()
            log.info("deletion finished", destination=destination, state=state)
            return

    def _changed_now(self) -> None:
        """Wake every status() waiting for a change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def status(self, user_id: str, wait: float = 0.0) -> list[dict[str, Any]]:
        """Per destination: state, attempts, reason or instructions, times (ISO-8601).

        With ``wait`` (seconds), answers once none is ``requested`` any more, or when
        the time is up (the states are then shown as they are)."""
        assert self._reader is not None
        deadline = time.monotonic() + wait
        while True:
            changed = self._changed
            rows = await sql.of_user(self._reader, user_id)
            left = deadline - time.monotonic()
            if left <= 0 or all(r.state != sql.REQUESTED for r in rows):
                return [_shown(r) for r in rows]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)


def _final(outcome: Ok | Permanent | Unsupported) -> tuple[str, str | None]:
    if isinstance(outcome, Ok):
        return sql.DONE, None
    if isinstance(outcome, Unsupported):
        return sql.UNSUPPORTED, outcome.instructions
    return sql.FAILED, outcome.reason


def _shown(row: sql.Deletion) -> dict[str, Any]:
    erasure = decode(row.erasure)
    return {
        "destination": row.destination,
        "type": row.type,
        "state": row.state,
        "attempts": row.attempts,
        # failed: why; requested: the last retry's reason (None before the first answer)
        "reason": row.reason if row.state != sql.UNSUPPORTED else None,
        "instructions": row.reason if row.state == sql.UNSUPPORTED else None,
        "requested_at": iso_ms(row.requested_at),
        "updated_at": iso_ms(row.updated_at),
        "next_attempt_at": iso_ms(row.next_attempt_at),
        "user_ids": list(erasure.user_ids),
        "anonymous_ids": list(erasure.anonymous_ids),
    }
