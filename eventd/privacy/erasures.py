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

State lives in the store (:class:`eventd.store.DeletionStore`: the SQLite, memory
and cluster stores keep it); the plugins are asked through
:meth:`eventd.delivery.dispatcher.Dispatcher.delete_user` (their rate limit), with
delivery's backoff (:func:`eventd.delivery.settle.backoff`) and each destination's
``retry_*`` settings.

On a store several nodes share (:class:`eventd.store.SharedDeletionStore`: the
cluster's) every node's service runs: a node asks a destination only while it
holds the deletion's claim, and only after reading it again, still requested, under
the claim; every ADOPT_EVERY seconds each node takes the requested ones nobody
holds (another node's new request, or a dead node's lapsed claim). So each
destination is asked once per erasure while no node dies (at least once if one does:
``delete_user`` is idempotent), and a status read on any node hears of every
node's changes. A node-local destination (each node its own file) is asked once by
every node, each under a claim of its own; its status shows each node's copy
(``nodes``) and is ``done`` once every node's is (eventd/store/cluster_deletions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from eventd.delivery.settle import backoff
from eventd.destination import Erasure, Ok, Permanent, Retry, StoredRef, Unsupported
from eventd.store import (
    DONE,
    FAILED,
    REQUESTED,
    UNSUPPORTED,
    Deletion,
    DeletionStore,
    SharedDeletionStore,
    StorageUnavailable,
    iso_ms,
    now_ms,
)
from eventd.tasks import cancel

if TYPE_CHECKING:
    from eventd.app import Runtime

log = structlog.get_logger("eventd.privacy")

# Seconds between a node's looks for requested deletions no node holds (a shared store).
ADOPT_EVERY = 3.0


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

    def __init__(self, runtime: Runtime, store: DeletionStore) -> None:
        self.runtime = runtime
        self.store = store
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._adopter: asyncio.Task[None] | None = None
        # Asked before eventd erases its own copy of the person's events.
        runtime.suppressions.before_erase.append(self.request)

    @property
    def destinations(self) -> list[str]:
        """The running destinations (a disabled one is asked once it runs again)."""
        return self.runtime.dispatcher.names

    async def start(self) -> None:
        if isinstance(self.store, SharedDeletionStore):
            self.store.on_deletion(lambda user_id: self._changed_now())
            self._adopter = asyncio.create_task(self._adopt(), name="privacy-adopt")
            return
        running = set(self.destinations)
        for row in await self.store.pending_deletions():
            if row.destination in running:
                self._spawn(row)
            else:
                log.warning("deletion waits for its destination", destination=row.destination)

    async def _adopt(self) -> None:
        """A shared store's: every ADOPT_EVERY seconds, run each requested deletion of a
        running destination that no task of this node runs (its claim decides who asks)."""
        while True:
            try:
                running = set(self.destinations)
                for row in await self.store.pending_deletions():
                    key = (row.user_id, row.destination)
                    if row.destination in running and key not in self._tasks:
                        self._spawn(row)
            except Exception as exc:  # the cluster stalled: the next look
                log.info("requested deletions not read", error=repr(exc))
            await asyncio.sleep(ADOPT_EVERY)

    async def stop(self) -> None:
        """Cancel what runs: a request cut short stays ``requested`` and is asked again
        at the next start (every delete_user is idempotent)."""
        await cancel(self._adopter, *self._tasks.values())

    async def request(self, user_id: str, user_ids: Sequence[str] = ()) -> None:
        """Ask every running destination to delete ``user_id`` (and ``user_ids``, more
        userIds of the person), with the anonymousIds and events stored of them, and
        every identity the features know of the person (``Suppressions.identities``:
        their identity profile's userIds and anonymousIds)."""
        profile_users, profile_anonymous = await self.runtime.suppressions.identities_of(user_id)
        ids = tuple(dict.fromkeys([user_id, *user_ids, *profile_users]))
        found = await self.store.user_events(ids)
        known = await self.store.deletions(user_id)
        erasure = Erasure(
            ids,
            tuple(
                dict.fromkeys(
                    [*(e.anonymous_id for e in found if e.anonymous_id), *profile_anonymous]
                )
            ),
            tuple(StoredRef(e.seq, e.source, e.received_at) for e in found),
        )
        if known:  # asked before: its events are erased by now, keep what was found then
            before = decode(known[0].erasure)
            erasure = Erasure(
                tuple(dict.fromkeys(before.user_ids + erasure.user_ids)),
                tuple(dict.fromkeys(before.anonymous_ids + erasure.anonymous_ids)),
                before.events + erasure.events,
            )
        destinations = self.runtime.config.destinations
        targets = [(name, destinations[name].type) for name in self.destinations]
        await self.store.request_deletions(user_id, targets, encode(erasure))
        running = set(self.destinations)
        for row in await self.store.deletions(user_id):
            runs = (user_id, row.destination) in self._tasks
            if row.state == REQUESTED and not runs and row.destination in running:
                self._spawn(row)
        log.info("deletion requested", destinations=len(targets))  # the id is personal data

    def _spawn(self, row: Deletion) -> None:
        key = (row.user_id, row.destination)
        task = asyncio.create_task(self._run(row))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _run(self, row: Deletion) -> None:
        store = self.store
        if not isinstance(store, SharedDeletionStore):
            await self._ask(row)
            return
        try:
            if not await store.claim_deletion(row.user_id, row.destination):
                return  # another node asks it
            try:
                # Read again under the claim: the node that held it before may be done.
                now = await store.deletion_here(row.user_id, row.destination)
                if now is not None and now.state == REQUESTED:
                    await self._ask(now, store)
            finally:
                with contextlib.suppress(Exception):
                    await store.release_deletion(row.user_id, row.destination)
        except StorageUnavailable as exc:  # a stalled cluster: a later look goes on
            log.info("deletion left for a later look", destination=row.destination, error=str(exc))

    async def _ask(self, row: Deletion, shared: SharedDeletionStore | None = None) -> None:
        """Ask the destination until it answers for good (``shared``: while this node
        holds the claim)."""
        user_id, destination, erasure = row.user_id, row.destination, decode(row.erasure)
        config = self.runtime.config.destinations[destination]
        attempts = row.attempts
        if row.next_attempt_at is not None:  # resumed after a restart, mid-backoff
            await asyncio.sleep(max(0.0, (row.next_attempt_at - now_ms()) / 1000))
        while True:
            if shared is not None and not await shared.claim_deletion(user_id, destination):
                return  # the claim lapsed (a stalled node) and another node took it
            attempts += 1
            outcome = await self.runtime.dispatcher.delete_user(destination, erasure)
            if isinstance(outcome, Retry) and (
                now_ms() - row.requested_at >= config.retry_max_age * 1000
            ):
                outcome = Permanent(f"retry_max_age passed; last: {outcome.reason}")
            if isinstance(outcome, Retry):
                # Delivery's own policy: exponential with jitter, or Retry-After.
                delay = backoff(
                    attempts, outcome.after, config.retry_backoff, config.retry_backoff_max
                )
                await self.store.save_deletion(
                    user_id,
                    destination,
                    REQUESTED,
                    attempts,
                    outcome.reason,
                    now_ms() + int(delay * 1000),
                )
                self._changed_now()
                await asyncio.sleep(delay)
                continue
            state, reason = _final(outcome)
            await self.store.save_deletion(user_id, destination, state, attempts, reason)
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
        deadline = time.monotonic() + wait
        while True:
            changed = self._changed
            rows = await self.store.deletions(user_id)
            left = deadline - time.monotonic()
            if left <= 0 or all(r.state != REQUESTED for r in rows):
                return [_shown(r) for r in rows]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)


def _final(outcome: Ok | Permanent | Unsupported) -> tuple[str, str | None]:
    if isinstance(outcome, Ok):
        return DONE, None
    if isinstance(outcome, Unsupported):
        return UNSUPPORTED, outcome.instructions
    return FAILED, outcome.reason


def _shown(row: Deletion) -> dict[str, Any]:
    erasure = decode(row.erasure)
    shown: dict[str, Any] = {
        "destination": row.destination,
        "type": row.type,
        "state": row.state,
        "attempts": row.attempts,
        # failed: why; requested: the last retry's reason (None before the first answer)
        "reason": row.reason if row.state != UNSUPPORTED else None,
        "instructions": row.reason if row.state == UNSUPPORTED else None,
        "requested_at": iso_ms(row.requested_at),
        "updated_at": iso_ms(row.updated_at),
        "next_attempt_at": iso_ms(row.next_attempt_at),
        "user_ids": list(erasure.user_ids),
        "anonymous_ids": list(erasure.anonymous_ids),
    }
    if row.nodes:  # a node-local destination on the cluster: each node's own file
        shown["nodes"] = [
            {
                "node": n.node,
                "state": n.state,
                "attempts": n.attempts,
                "reason": n.reason,
                "updated_at": iso_ms(n.updated_at),
                "next_attempt_at": iso_ms(n.next_attempt_at),
            }
            for n in row.nodes
        ]
    return shown
