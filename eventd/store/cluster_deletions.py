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
            both saw it requested, the second finds it done). Claims are held with
            the aside leases (one :class:`~eventd.store.leases.HeldLeases`),
            renewed every ASIDE_RENEW seconds, and lapse with the bucket's TTL (10 s): a
            node that dies mid-request leaves the deletion to another node, which
            asks again (a destination's ``delete_user`` is idempotent: at least
            once, exactly once while no node dies).

A node-local destination (``Destination.node_local``: duckdb; each node loads its
own file through its own consumer) is deleted from by every node, each from its own
file: its deletion's record holds one copy per node (``nodes``: a
:class:`~eventd.store.base.NodeDeletion` each, by the node's lasting id), made for
every node that has a consumer of the destination when the erasure is requested
(and the requesting node). Each node runs its own copy under its own claim,
``erase-<sha256 of userId, destination and node id>``, and saves its own copy's
state; every write sums the copies up into the record's state (requested while a
copy is; then failed, unsupported, done), so the record is ``done`` only once every
copy not ``gone`` is. A copy is ``gone`` once its node's consumer is removed (the
node was away longer than ``storage.retention``): any node that finds a requested
copy of a node without a consumer (:meth:`pending_deletions`, every few seconds)
marks it so, and the erasure no longer waits for it. A node that comes back with
its old file after all runs its ``gone`` copy then (its file still holds the
person). A node that first consumes the destination after the request has no
copy: it loads its file from the log, from which the erasure deleted her events.

Every node watches the bucket, so a node answering ``GET
/admin/suppressions/{user_id}?wait=S`` hears of a state another node saved, and
keeps the keys last seen ``requested`` (or with this node's copy to run):
``pending_deletions`` (which the privacy
service calls every few seconds on every node) reads those again from the leader,
not every deletion ever made.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

import orjson
import structlog
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from eventd.store import kv_cas
from eventd.store.base import (
    DONE,
    FAILED,
    GONE,
    MAX_ERROR_CHARS,
    REQUESTED,
    UNSUPPORTED,
    Deletion,
    NodeDeletion,
    UserEvent,
    deletion_requested,
    deletion_saved,
    now_ms,
)
from eventd.store.cluster_admin import (
    EVENT_BITS,
    ClusterAdmin,
    _key,
    _user_of_key,
    admin_bucket,
    watch_bucket,
)
from eventd.store.cluster_errors import unavailable
from eventd.tasks import cancel

log = structlog.get_logger("eventd.store.cluster_deletions")


def _deletion_key(user_id: str, destination: str) -> str:
    return f"{_key(user_id)}.{_key(destination)}"


def _claim_key(user_id: str, destination: str, node: str = "") -> str:
    """A shared destination's claim (``node`` ""), or one node's of its own copy."""
    name = f"{user_id}\0{destination}" + (f"\0{node}" if node else "")
    return f"erase-{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def _encode(d: Deletion) -> bytes:
    record = {**asdict(d), "erasure": base64.b64encode(d.erasure).decode()}
    if not d.nodes:  # a shared destination's: as written before copies existed
        del record["nodes"]
    return orjson.dumps(record)


def _decode(value: bytes) -> Deletion:
    d = orjson.loads(value)
    nodes = tuple(NodeDeletion(**n) for n in d.pop("nodes", ()))
    return Deletion(**{**d, "erasure": base64.b64decode(d["erasure"]), "nodes": nodes})


def _summed(d: Deletion) -> Deletion:
    """``d`` (a node-local destination's) with its state, attempts, reason and times
    summed up from its copies: requested while a copy not gone is, then failed,
    unsupported, done (every copy gone: done, no file is left to delete from);
    attempts all of them; the reasons of the copies in that state, by node."""
    if not d.nodes:
        return d
    counted = [n for n in d.nodes if n.state != GONE]
    state = next(
        (s for s in (REQUESTED, FAILED, UNSUPPORTED) if any(n.state == s for n in counted)), DONE
    )
    these = [n for n in counted if n.state == state]
    if state == UNSUPPORTED:  # instructions: the destination type's, every node's alike
        reason = these[0].reason
    else:
        reason = "; ".join(f"node {n.node}: {n.reason}" for n in these if n.reason) or None
    waits = [n.next_attempt_at for n in these if n.next_attempt_at is not None]
    return replace(
        d,
        state=state,
        attempts=sum(n.attempts for n in d.nodes),
        reason=reason[:MAX_ERROR_CHARS] if reason else None,
        updated_at=max(n.updated_at for n in d.nodes),
        next_attempt_at=min(waits) if state == REQUESTED and waits else None,
    )


def _with_copy(d: Deletion, copy: NodeDeletion) -> Deletion:
    """``d`` with ``copy`` in place of its node's, summed up again."""
    nodes = sorted([n for n in d.nodes if n.node != copy.node] + [copy], key=lambda n: n.node)
    return _summed(replace(d, nodes=tuple(nodes)))


class ClusterDeletions(ClusterAdmin):
    """Forwarded erasures in ``S_DELETIONS`` and their claims (the module docstring)."""

    def _admin_init(self) -> None:
        super()._admin_init()
        self._deletions_kv: KeyValue | None = None
        self._deletion_listeners: list[Callable[[str], None]] = []
        # Keys last seen REQUESTED (the watch's and this node's writes): what
        # pending_deletions reads from the leader, rather than the whole bucket.
        self._requested: set[str] = set()
        self._deletions_watcher: asyncio.Task[None] | None = None

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

    async def close_admin(self) -> None:
        await cancel(self._deletions_watcher)
        await super().close_admin()  # gives the claims back with the aside leases

    @property
    def _dels(self) -> KeyValue:
        assert self._deletions_kv is not None, "open() first"
        return self._deletions_kv

    def on_deletion(self, listener: Callable[[str], None]) -> None:
        self._deletion_listeners.append(listener)

    def _here(self, d: Deletion) -> Deletion | None:
        """``d`` as this node runs it: a shared destination's as it is; a node-local
        one's with this node's copy's fields (None: this node has no copy). A copy
        counted gone whose node is back runs again: its file still holds the person."""
        if not d.nodes:
            return d
        copy = next((n for n in d.nodes if n.node == self.node_id), None)
        if copy is None:
            return None
        return replace(
            d,
            state=REQUESTED if copy.state == GONE else copy.state,
            attempts=copy.attempts,
            reason=copy.reason,
            updated_at=copy.updated_at,
            next_attempt_at=copy.next_attempt_at,
            nodes=(),
        )

    def _note(self, key: str, found: Deletion | None) -> None:
        here = self._here(found) if found is not None else None
        if found is not None and REQUESTED in (found.state, here and here.state):
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

    @unavailable()
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
    ) -> Deletion | None:
        """Read one deletion, ``change`` it, write it back if it changed,
        compare-and-set (another node's write in between: again); returns it as it
        stands then."""
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
                return old
            try:
                if revision is None:
                    await kv_cas.create(self._dels, key, _encode(new))
                else:
                    await kv_cas.update(self._dels, key, _encode(new), last=revision)
            except KeyWrongLastSequenceError:
                continue
            self._note(key, new)
            return new

    @unavailable()
    async def request_deletions(
        self, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
    ) -> None:
        """A node-local destination's with a copy for each node that has its consumer
        now, and this one (the module docstring)."""
        at = now_ms()
        for destination, type_ in destinations:
            nodes: list[str] = []
            if destination in self.local:
                nodes = sorted(await self.js.local_nodes(destination) | {self.node_id})

            def ask(
                old: Deletion | None,
                destination: str = destination,
                type_: str = type_,
                nodes: list[str] = nodes,
            ) -> Deletion:
                new = deletion_requested(old, user_id, destination, type_, erasure, at)
                if new is old or not nodes:
                    return new
                copies = tuple(NodeDeletion(n, REQUESTED, 0, None, at, None) for n in nodes)
                return replace(new, nodes=copies)

            await self._change(user_id, destination, ask)

    @unavailable()
    async def save_deletion(
        self,
        user_id: str,
        destination: str,
        state: str,
        attempts: int,
        reason: str | None,
        next_attempt_at: int | None = None,
    ) -> None:
        """A node-local destination's: this node's copy (the module docstring)."""

        def save(old: Deletion | None) -> Deletion | None:
            if old is None:
                return None
            if not old.nodes:
                return deletion_saved(old, state, attempts, reason, next_attempt_at)
            mine = deletion_saved(old, state, attempts, reason, next_attempt_at)
            copy = NodeDeletion(
                self.node_id, state, attempts, mine.reason, mine.updated_at, next_attempt_at
            )
            return _with_copy(old, copy)

        await self._change(user_id, destination, save)

    @unavailable()
    async def pending_deletions(self) -> list[Deletion]:
        """The keys last seen requested, each read again from the leader (one another
        node requested a moment ago may come at the next call, once the watch has it),
        as this node runs them (a node-local destination's: this node's copies). On
        the way, another node's requested copy whose node has no consumer left is
        marked gone (the module docstring)."""
        found = []
        live: dict[str, set[str]] = {}  # a node-local destination's nodes, asked once
        for key in list(self._requested):
            try:
                entry = await self._dels.get(key)
            except NotFoundError:
                self._requested.discard(key)
                continue
            d = _decode(entry.value) if entry.value else None
            self._note(key, d)
            if d is not None and d.nodes and d.state == REQUESTED and d.destination in self.local:
                d = await self._drop_gone(d, live)
            here = self._here(d) if d is not None else None
            if here is not None and here.state == REQUESTED:
                found.append(here)
        return sorted(found, key=lambda d: d.requested_at)

    async def _drop_gone(self, d: Deletion, live: dict[str, set[str]]) -> Deletion | None:
        """Mark gone the requested copies of other nodes that no longer have a consumer
        of ``d.destination`` (``live`` caches the nodes that do, by destination)."""
        others = {n.node for n in d.nodes if n.state == REQUESTED and n.node != self.node_id}
        if not others:
            return d
        if d.destination not in live:
            live[d.destination] = await self.js.local_nodes(d.destination)
        gone = others - live[d.destination]
        if not gone:
            return d
        log.warning(
            "deletion no longer waits for nodes gone for good",
            destination=d.destination,
            nodes=sorted(gone),
        )
        at = now_ms()

        def drop(old: Deletion | None) -> Deletion | None:
            if old is None:
                return None
            nodes = tuple(
                replace(n, state=GONE, next_attempt_at=None, updated_at=at)
                if n.node in gone and n.state == REQUESTED
                else n
                for n in old.nodes
            )
            return _summed(replace(old, nodes=nodes))

        return await self._change(d.user_id, d.destination, drop)

    @unavailable()
    async def deletion_here(self, user_id: str, destination: str) -> Deletion | None:
        try:
            entry = await self._dels.get(_deletion_key(user_id, destination))
        except NotFoundError:
            return None
        return self._here(_decode(entry.value)) if entry.value else None

    @unavailable()
    async def deletions(self, user_id: str) -> list[Deletion]:
        entries = await self._entries(f"{_key(user_id)}.*", self._dels)
        return sorted((_decode(v) for v in entries.values() if v), key=lambda d: d.destination)

    # -- claims: one node at a time asks a destination -----------------------------

    def _claim_of(self, user_id: str, destination: str) -> str:
        """The claim's key: a node-local destination's is this node's own."""
        node = self.node_id if destination in self.local else ""
        return _claim_key(user_id, destination, node)

    @unavailable()
    async def claim_deletion(self, user_id: str, destination: str) -> bool:
        # Held already: the renewals keep it (or drop it once lost).
        return await self._held.keep(self._claim_of(user_id, destination))

    async def release_deletion(self, user_id: str, destination: str) -> None:
        await self._held.let_go(self._claim_of(user_id, destination))
