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
costs one set lookup per message, and nothing while the set is empty. On a store
shared by several nodes (:class:`SharedSuppressions`: the cluster store) the set
follows the store's changes, another node's included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import structlog

from eventd.store import Store, Suppression, iso_ms

log = structlog.get_logger("eventd.suppressions")

# A person's (userIds, anonymousIds), as a feature that knows more of them answers.
Identities = tuple[list[str], list[str]]


@runtime_checkable
class SharedSuppressions(Protocol):
    """A store whose suppressions other processes change too (the cluster store)."""

    def on_suppression(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(user_id, suppressed)`` whenever this process's view of a
        user's suppression changes, whoever changed it."""
        ...


class Suppressions:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Read by ingest and the dispatcher; changed only here, in place.
        self.user_ids: set[str] = set()
        # Features holding more of a user (identity: the profile and its anonymous
        # events) erase it and return the seqs of further events to delete.
        self.erasers: list[Callable[[str], Awaitable[list[int]]]] = []
        # Called with the userId before its stored events are erased (eventd/privacy/
        # forwards the erasure to destinations and reads the person's events first).
        self.before_erase: list[Callable[[str], Awaitable[None]]] = []
        # Features that know the person's other identities (identity: their profile)
        # return (userIds, anonymousIds) for a userId; before_erase hooks read them (the
        # erasers may delete what they come from), so an erasure covers every one.
        self.identities: list[Callable[[str], Awaitable[Identities]]] = []
        # Set whenever another node's change reached user_ids (tests wait on it).
        self.changed = asyncio.Event()

    async def load(self) -> None:
        self.user_ids.update(s.user_id for s in await self.store.suppressions())
        if isinstance(self.store, SharedSuppressions):
            self.store.on_suppression(self._follow)

    def _follow(self, user_id: str, suppressed: bool) -> None:
        """A change the shared store saw (ours, or another node's)."""
        if suppressed:
            self.user_ids.add(user_id)
        else:
            self.user_ids.discard(user_id)
        self.changed.set()

    async def close(self) -> None:
        """Nothing held beyond the store (kept so the app's shut-down reads the same)."""

    async def list(self) -> list[dict[str, Any]]:
        return [_record(s) for s in await self.store.suppressions()]

    async def get(self, user_id: str) -> dict[str, Any] | None:
        found = await self.store.suppression(user_id)
        return _record(found) if found else None

    async def suppress(self, user_id: str, erase: bool) -> dict[str, Any]:
        """Suppress ``user_id`` (again: ``erase`` can be turned on, never off); with
        ``erase``, delete what is stored of it now. Returns the suppression's record."""
        # In memory first: from here on ingest drops the user's events.
        new = user_id not in self.user_ids
        self.user_ids.add(user_id)
        try:
            await self.store.suppress(user_id, erase)
        except BaseException:
            # Not stored (StorageUnavailable, a backend without suppressions): the
            # caller was refused, so the user's events must not be skipped either.
            if new:
                self.user_ids.discard(user_id)
            raise
        log.info("user suppressed", erase=erase)  # the id itself is personal data: not logged
        if erase:
            for hook in self.before_erase:
                await hook(user_id)
            await self.erase(user_id)
        record = await self.get(user_id)
        assert record is not None
        return record

    async def identities_of(self, user_id: str) -> Identities:
        """Every userId (``user_id`` first) and anonymousId the features know of the
        person, each once; ``([user_id], [])`` when none knows more."""
        users, anonymous = [user_id], []
        for find in self.identities:
            more_users, more_anonymous = await find(user_id)
            users += more_users
            anonymous += more_anonymous
        return list(dict.fromkeys(users)), list(dict.fromkeys(anonymous))

    async def unsuppress(self, user_id: str) -> bool:
        """Take the user's events again from now on. What was erased stays erased."""
        removed = await self.store.unsuppress(user_id)
        self.user_ids.discard(user_id)
        if removed:
            log.info("user no longer suppressed")
        return removed

    async def erase(self, user_id: str) -> bool:
        """Delete the user's stored events and dead letters; True when none is left."""
        # Every event of the user is committed by now: ingest checks the set and queues
        # its write without awaiting in between, so what passed the check before the
        # user was added was queued before the suppression's own write, and committed.
        # The newest event is kept (its seq would be handed out again, see retention).
        also = [seq for eraser in self.erasers for seq in await eraser(user_id)]
        events, dead, done = await self.store.erase_user(user_id, self.store.last_seq, also)
        if events or dead:
            await self.store.compact()  # and out of the WAL
        log.info(
            "user erased" if done else "user partly erased (their event is the newest)",
            events=events,
            dead_letters=dead,
        )
        return done

    async def erase_pending(self) -> int:
        """Finish erasures that could not finish (retention calls this every sweep)."""
        finished = 0
        for user_id in await self.store.pending_erasures():
            finished += await self.erase(user_id)
        return finished


def _record(s: Suppression) -> dict[str, Any]:
    return {
        "user_id": s.user_id,
        "created_at": iso_ms(s.created_at),
        "erase": s.erase,
        "erased_events": s.erased_events,
        "erased_at": iso_ms(s.erased_at),
    }
