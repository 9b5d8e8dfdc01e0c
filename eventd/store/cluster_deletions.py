"""Erasures forwarded to destinations, on the cluster: the cluster store's
:class:`~eventd.store.base.SharedDeletionStore` (eventd/privacy/ runs them).

:class:`ClusterDeletions` extends :class:`~eventd.store.cluster_admin.ClusterAdmin`
(a part of :class:`~eventd.store.cluster.ClusterStore`) with:

``S_DELETIONS`` key-value bucket (S: ``storage.stream``): one key per (suppressed
            userId, destination), ``<userId>.<destination>`` each as base64url
            (any string is a valid key), the :class:`~eventd.store.base.Deletion`
            as JSON (its erasure base64). Written compare-and-set, so two nodes
            asking at once record one request, and a state a node saved is never
            overwritten by another's older copy. Reads go to the stream's leader
            (no direct reads): a node sees every write acknowledged to another.
``erase-<sha256 of userId and destination>`` in ``S_LEASES``: the claim of the
            node asking that destination now. The privacy service asks a
            destination only while it holds the claim and after reading the
            deletion again, still ``requested``, under it (so of two nodes that
            both saw it requested, the second finds it done). Claims are renewed
            every ASIDE_RENEW seconds and lapse with the bucket's TTL (10 s): a
            node that dies mid-request leaves the deletion to another node, which
            asks again (a destination's ``delete_user`` is idempotent: at least
            once, exactly once while no node dies).

Every node watches the bucket, so a node answering ``GET
/admin/suppressions/{user_id}?wait=S`` hears of a state another node saved, and
keeps the keys last seen ``requested``: ``pending_deletions`` (which the privacy
service calls every few seconds on every node) reads those again from the leader,
not every deletion ever made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict

import orjson
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from eventd.store.base import (
    REQUESTED,
    Deletion,
    UserEvent,
    deletion_requested,
    deletion_saved,
    now_ms,
)
from eventd.store.cluster_admin import (
    ASIDE_RENEW,
    EVENT_BITS,
    ClusterAdmin,
    _key,
    _unavailable,
    _user_of_key,
    admin_bucket,
    cancel,
    watch_bucket,
)


def _deletion_key(user_id: str, destination: str) -> str:
    return f"{_key(user_id)}.{_key(destination)}"


def _claim_key(user_id: str, destination: str) -> str:
    digest = hashlib.sha256(f"{user_id}\0{destination}".encode()).hexdigest()[:40]
    return f"erase-{digest}"


def _encode(d: Deletion) -> bytes:
    return orjson.dumps({**asdict(d), "erasure": base64.b64encode(d.erasure).decode()})


def _decode(value: bytes) -> Deletion:
    d = orjson.loads(value)
    return Deletion(**{**d, "erasure": base64.b64decode(d["erasure"])})


class ClusterDeletions(ClusterAdmin):
    """Forwarded erasures in ``S_DELETIONS`` and their claims (the module docstring)."""

    def _admin_init(self) -> None:
        super()._admin_init()
        self._deletions_kv: KeyValue | None = None
        self._claims: dict[str, int] = {}  # claim key -> its revision, held by this node
        self._deletion_listeners: list[Callable[[str], None]] = []
        # Keys last seen REQUESTED (the watch's and this node's writes): what
        # pending_deletions reads from the leader, rather than the whole bucket.
        self._requested: set[str] = set()
        self._deletions_watcher: asyncio.Task[None] | None = None
        self._claims_renewer: asyncio.Task[None] | None = None

    async def open_admin(self) -> None:
        await super().open_admin()
        js, names = self.js.js, self.js.names
        bucket = f"{names.stream}_DELETIONS"
        self._deletions_kv = await admin_bucket(js, bucket, self.js.cfg.replicas)
        ready = asyncio.Event()
        self._deletions_watcher = asyncio.create_task(
            watch_bucket(lambda: self._dels, self._deletion_seen, ready, "deletions"),
            name="deletions",
        )
        await asyncio.wait_for(ready.wait(), self.js.cfg.publish_timeout * 6)
        self._claims_renewer = asyncio.create_task(self._renew_claims(), name="deletion-claims")

    async def close_admin(self) -> None:
        await cancel(self._deletions_watcher, self._claims_renewer)
        for key in list(self._claims):
            await self._let_go(key)
        await super().close_admin()

    @property
    def _dels(self) -> KeyValue:
        assert self._deletions_kv is not None, "open() first"
        return self._deletions_kv

    def on_deletion(self, listener: Callable[[str], None]) -> None:
        self._deletion_listeners.append(listener)

    def _note(self, key: str, found: Deletion | None) -> None:
        if found is not None and found.state == REQUESTED:
            self._requested.add(key)
        else:
            self._requested.discard(key)

    def _deletion_seen(self, entry: KeyValue.Entry) -> None:
        gone = entry.operation in ("DEL", "PURGE") or not entry.value
        self._note(entry.key, None if gone or entry.value is None else _decode(entry.value))
        user_id = _user_of_key(entry.key.split(".", 1)[0])
        for listener in self._deletion_listeners:
            listener(user_id)

    # -- the records --------------------------------------------------------------

    @_unavailable
    async def user_events(self, user_ids: Sequence[str]) -> list[UserEvent]:
        """A scan of the whole log (as erasure's; this node has then seen its end)."""
        ids = set(user_ids)
        _, log_last = await self._log_bounds()
        found = []
        async for log_seq, rows in self._scan(log_last, start=1):
            self.seen(log_seq << EVENT_BITS | (len(rows) - 1))
            for offset, row in enumerate(rows):
                if row[4] in ids:
                    found.append(UserEvent(log_seq << EVENT_BITS | offset, row[0], row[6], row[5]))
        return found

    async def _change(
        self, user_id: str, destination: str, change: Callable[[Deletion | None], Deletion | None]
    ) -> None:
        """Read one deletion, ``change`` it, write it back if it changed,
        compare-and-set (another node's write in between: again)."""
        key = _deletion_key(user_id, destination)
        while True:
            try:
                entry = await self._dels.get(key)
                old, revision = _decode(entry.value) if entry.value else None, entry.revision
            except NotFoundError:  # KeyNotFoundError, KeyDeletedError
                old, revision = None, None
            new = change(old)
            if new is None or new == old:
                self._note(key, old)
                return
            try:
                if revision is None:
                    await self._dels.create(key, _encode(new))
                else:
                    await self._dels.update(key, _encode(new), last=revision)
            except KeyWrongLastSequenceError:
                continue
            self._note(key, new)
            return

    @_unavailable
    async def request_deletions(
        self, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
    ) -> None:
        at = now_ms()
        for destination, type_ in destinations:

            def ask(
                old: Deletion | None, destination: str = destination, type_: str = type_
            ) -> Deletion:
                return deletion_requested(old, user_id, destination, type_, erasure, at)

            await self._change(user_id, destination, ask)

    @_unavailable
    async def save_deletion(
        self,
        user_id: str,
        destination: str,
        state: str,
        attempts: int,
        reason: str | None,
        next_attempt_at: int | None = None,
    ) -> None:
        def save(old: Deletion | None) -> Deletion | None:
            return old and deletion_saved(old, state, attempts, reason, next_attempt_at)

        await self._change(user_id, destination, save)

    @_unavailable
    async def pending_deletions(self) -> list[Deletion]:
        """The keys last seen requested, each read again from the leader (one another
        node requested a moment ago may come at the next call, once the watch has it)."""
        found = []
        for key in list(self._requested):
            try:
                entry = await self._dels.get(key)
            except NotFoundError:
                self._requested.discard(key)
                continue
            d = _decode(entry.value) if entry.value else None
            self._note(key, d)
            if d is not None and d.state == REQUESTED:
                found.append(d)
        return sorted(found, key=lambda d: d.requested_at)

    @_unavailable
    async def deletions(self, user_id: str) -> list[Deletion]:
        entries = await self._entries(f"{_key(user_id)}.*", self._dels)
        return sorted((_decode(v) for v in entries.values() if v), key=lambda d: d.destination)

    # -- claims: one node at a time asks a destination -----------------------------

    @_unavailable
    async def claim_deletion(self, user_id: str, destination: str) -> bool:
        key = _claim_key(user_id, destination)
        if key in self._claims:  # held: the renewer keeps it (or drops it once lost)
            return True
        leases = self.js.leases
        assert leases is not None
        try:
            self._claims[key] = await leases.create(key, self.js.node_id.encode())
        except KeyWrongLastSequenceError:  # another node holds it
            return False
        return True

    async def release_deletion(self, user_id: str, destination: str) -> None:
        await self._let_go(_claim_key(user_id, destination))

    async def _let_go(self, key: str) -> None:
        revision = self._claims.pop(key, None)
        leases = self.js.leases
        if revision is not None and leases is not None:
            with contextlib.suppress(Exception):  # lapsed meanwhile: the TTL frees it
                await leases.delete(key, last=revision)

    async def _renew_claims(self) -> None:
        leases = self.js.leases
        assert leases is not None
        while True:
            await asyncio.sleep(ASIDE_RENEW)
            for key, revision in list(self._claims.items()):
                try:
                    renewed = await leases.update(key, self.js.node_id.encode(), last=revision)
                except KeyWrongLastSequenceError:  # lapsed and taken by another node
                    self._claims.pop(key, None)
                    continue
                except Exception:  # a stalled cluster: the next round
                    continue
                if key in self._claims:
                    self._claims[key] = renewed
                else:  # released while renewing: the release's delete missed it
                    with contextlib.suppress(Exception):
                        await leases.delete(key, last=renewed)
