"""The cluster store's administrative state, shared by every node: suppressions,
redrive, replay, dead-letter purges, reading the log by seq or messageId, erasure.

:class:`ClusterAdmin` is a part of :class:`~eventd.store.cluster.ClusterStore`
(a mixin over its ``js``, the node's :class:`~eventd.store.jetstream.JetStreamStore`)
that implements these Store protocol methods on the cluster, so the conformance
suite (tests/store/) and the running parts (the admin API, the worker's
redrive/replay loop, eventd/suppressions.py) use them as on SQLite.

Where each piece lives (S: ``storage.stream``):

``S_SUPPRESSED`` key-value bucket: one key per suppressed userId (base64url of
            it), the :class:`~eventd.store.base.Suppression` as JSON. Every node
            watches the bucket and keeps a copy in memory (ingest and delivery
            check a set, without I/O): a suppression written on one node reaches
            the others' copies as soon as their watch delivers it (milliseconds on
            a healthy cluster; while a node cannot reach the cluster, never).
``S_ASIDE`` key-value bucket: ``redrive.<destination>.<dead id>`` marks a dead
            letter asked back; ``replay.<destination>.<id>`` is a replay's range
            ``{next_seq, until_seq}``, advanced page by page; ``replay-ids``
            allocates replay ids.
``aside-<destination>`` in ``S_LEASES``: which node does a destination's
            redrives and replays now. A node takes it when it finds such work and
            gives it back when none is left, renewing it meanwhile (TTL 10 s): one
            node at a time resends a dead letter or a replayed page; a node that
            dies mid-page leaves the range where its last page ended, and another
            node takes over at its next look (at least once: that page may be
            sent twice). A node-local destination's work is per node:
            ``aside-<destination>.<node id>`` covers the letters that node's file
            refused (a redrive mark's value, a letter's ``node``) and the replays
            queued for it (one per node with a consumer: every file gets them);
            a node gone for good (no consumer left) has its letters refused by id
            (:class:`~eventd.store.base.Conflict`) and its replays dropped.

Reading the log by position: an event's seq is ``log sequence << EVENT_BITS | its
place in the message`` (eventd/store/cluster.py), so a read starts an ephemeral
consumer at that log sequence (or, for replay from a time, at that time: a log
message is stored after its events were received, so a consumer starting at
``since`` sees every event received since then) and reads up to the last
sequence the stream leader reports. That is a scan: a lookup by messageId reads
the log backwards in windows of :data:`FIND_WINDOW` messages until it finds the
newest copy (or reads the whole log, for an id that is not there).

Erasure deletes log messages with JetStream's message delete, which overwrites the
message in the stream's files on every replica (not ``no_erase``). A log message
holds a group of events, several users' maybe: one holding other users' events
too is published again without the erased user's (a new sequence, at the end of
the log) and then deleted, so a destination that had already passed it receives
those other events a second time (at least once). The events' copies in ``S_IN``
are gone once forwarded (work-queue retention), but JetStream does not overwrite
a work-queue message it removes, nor the raft logs before they are compacted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import orjson
import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError, ServerError
from nats.js.kv import KeyValue

from eventd.event import Event
from eventd.store import kv_cas
from eventd.store.base import (
    Conflict,
    DeadLetter,
    EventRow,
    Replay,
    SeqRange,
    Suppression,
    now_ms,
)
from eventd.store.cluster_errors import unavailable
from eventd.store.jetstream import JetStreamStore, decode_rows, encode_rows, user_partition
from eventd.store.leases import HeldLeases
from eventd.tasks import cancel

log = structlog.get_logger("eventd.store.cluster_admin")

EVENT_BITS = 20  # as eventd/store/cluster.py: seq = log sequence << EVENT_BITS | offset
_OFFSET = (1 << EVENT_BITS) - 1
FIND_WINDOW = 1024  # log messages a lookup by messageId reads per step, newest first
ASIDE_RENEW = 3.0  # seconds between renewals of the aside leases and erase claims held
FETCH = 256  # log messages per fetch of a scan
NO_MESSAGE = 10057  # JetStream's err_code for a delete of a message that is not there

# (log sequence, the message's rows)
LogMessage = tuple[int, list[EventRow]]
# Called with (userId, suppressed now?) when a node's copy of the suppressions changes.
SuppressionListener = Callable[[str, bool], None]


P = ParamSpec("P")
R = TypeVar("R")


def _key(user_id: str) -> str:
    """A userId as a key-value key (any string: base64url, which keys allow)."""
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=") or "="


def _user_of_key(key: str) -> str:
    """The userId :func:`_key` made ``key`` of."""
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


def _event(log_seq: int, offset: int, row: EventRow) -> Event:
    return Event(log_seq << EVENT_BITS | offset, row[0], row[6], body=row[7], user_id=row[4])


async def delete_msg(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Delete message ``seq`` of ``stream``: True when this call deleted it, False when
    it was gone already (another node's delete, retention). The stream leader applies
    deletes one at a time through its raft log, so of two nodes deleting one message at
    once exactly one gets True: what counts each erased event once."""
    try:
        return bool(await js.delete_msg(stream, seq))
    except NotFoundError:
        return False
    except ServerError as exc:
        if exc.err_code == NO_MESSAGE:
            return False
        raise


def _user_of(body: bytes) -> str | None:
    user = orjson.loads(body).get("userId")
    return user if isinstance(user, str) else None


async def admin_bucket(js: JetStreamContext, name: str, replicas: int) -> KeyValue:
    """Bind the bucket, creating it when new (history 1; reads go to its leader)."""
    try:
        return await js.key_value(name)
    except NotFoundError:  # another node may create it at the same time: same config
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, replicas=replicas))


REWATCH = 30.0  # seconds a bucket watch runs before it is made again (watch_bucket)


async def watch_bucket(
    bucket: Callable[[], KeyValue],
    seen: Callable[[KeyValue.Entry], None],
    ready: asyncio.Event,
    what: str,
) -> None:
    """Call ``seen`` with every entry of the bucket, its current values first (then
    ``ready`` is set) and every change after, for as long as this runs; a lost
    connection watches again, and so does every :data:`REWATCH` seconds (the
    current values come again: ``seen`` must take a repeat). The regular re-watch
    is there because nats-py's watcher can drop an entry without a word: its
    callback waits for the watch's set-up only up to the client's timeout and an
    entry whose wait timed out is gone (seen under load: a node's copy of a
    suppression stayed one write behind for over a minute)."""
    while True:
        try:
            watcher = await bucket().watchall()
            try:
                async with asyncio.timeout(REWATCH):
                    async for entry in watcher:
                        if entry is None:  # the current values are all in
                            ready.set()
                        else:
                            seen(entry)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            continue  # REWATCH: the current values again
        except Exception as exc:  # a lost connection: watch again (copies are kept)
            log.info("bucket watch failed; restarting", bucket=what, error=repr(exc))
            await asyncio.sleep(1.0)


class ClusterAdmin:
    """Suppressions, redrive, replay, purges, reads and erasure on the cluster (see
    the module docstring). Mixed into ClusterStore, which owns ``js`` and calls
    :meth:`open_admin` / :meth:`close_admin`."""

    js: JetStreamStore
    local: list[str]  # ClusterStore's: the node-local destinations
    node_id: str  # ClusterStore's: this node's lasting id ("" without node-local ones)

    def seen(self, seq: int) -> None: ...  # ClusterStore's: the newest event seq seen

    _last_seq: int  # ClusterStore's: the newest event seq seen (its last_seq)

    def _admin_init(self) -> None:
        # userId -> (revision, the suppression or None: removed at that revision)
        self._suppressed: dict[str, tuple[int, Suppression | None]] = {}
        self._listeners: list[SuppressionListener] = []
        self._watcher: asyncio.Task[None] | None = None
        self._aside: KeyValue | None = None
        self._suppressions_kv: KeyValue | None = None
        # The aside leases (and ClusterDeletions' claims) this node holds.
        self._held = HeldLeases(self._leases, self.js.node_id, self.js.lease_ttl)
        self._watch_ready = asyncio.Event()

    # -- life cycle -------------------------------------------------------------

    async def open_admin(self) -> None:
        """Create or find the buckets, read the suppressions and watch them."""
        js, names, replicas = self.js.js, self.js.names, self.js.cfg.replicas
        buckets = []
        for bucket in (f"{names.stream}_SUPPRESSED", f"{names.stream}_ASIDE"):
            buckets.append(await admin_bucket(js, bucket, replicas))
        self._suppressions_kv, self._aside = buckets
        self._watcher = asyncio.create_task(self._watch_suppressions(), name="suppressions")
        await asyncio.wait_for(self._watch_ready.wait(), self.js.cfg.publish_timeout * 6)
        self._held.start(ASIDE_RENEW, "aside-leases")

    async def close_admin(self) -> None:
        await cancel(self._watcher)
        # Disconnected: left to the TTL.
        await self._held.stop(give_back=self.js.nc is not None and self.js.nc.is_connected)

    def _leases(self) -> KeyValue:
        leases = self.js.leases
        assert leases is not None, "open() first"
        return leases

    @property
    def _sup(self) -> KeyValue:
        assert self._suppressions_kv is not None, "open() first"
        return self._suppressions_kv

    @property
    def _asides(self) -> KeyValue:
        assert self._aside is not None, "open() first"
        return self._aside

    # -- suppressions -----------------------------------------------------------

    def on_suppression(self, listener: SuppressionListener) -> None:
        """Call ``listener(user_id, suppressed)`` on every change this node sees,
        its own and other nodes' (eventd/suppressions.py keeps its set so)."""
        self._listeners.append(listener)

    async def _watch_suppressions(self) -> None:
        """Keep this node's copy of S_SUPPRESSED current, for as long as it runs."""

        def seen(entry: KeyValue.Entry) -> None:
            user_id = _user_of_key(entry.key)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._apply(user_id, entry.revision or 0, None)
            else:
                self._apply(user_id, entry.revision or 0, _suppression(entry.value))

        await watch_bucket(lambda: self._sup, seen, self._watch_ready, "suppressions")

    def _apply(self, user_id: str, revision: int, found: Suppression | None) -> None:
        """Take a value seen at ``revision`` unless a newer one is held already."""
        held = self._suppressed.get(user_id)
        if held is not None and held[0] >= revision:
            return  # a late copy of an older write: the newer one stays
        was = held is not None and held[1] is not None
        self._suppressed[user_id] = (revision, found)
        if was != (found is not None):
            for listener in self._listeners:
                listener(user_id, found is not None)

    def erasing(self, user_id: str) -> bool:
        """Whether the user's stored events are to be erased (a suppression with
        ``erase``, as this node's watch of the bucket has it)."""
        held = self._suppressed.get(user_id)
        return held is not None and held[1] is not None and held[1].erase

    async def suppressions(self) -> list[Suppression]:
        found = [s for _, s in self._suppressed.values() if s is not None]
        return sorted(found, key=lambda s: s.created_at)

    async def suppression(self, user_id: str) -> Suppression | None:
        held = self._suppressed.get(user_id)
        return held[1] if held else None

    async def _update_suppression(
        self, user_id: str, change: Callable[[Suppression | None], Suppression | None]
    ) -> tuple[Suppression | None, Suppression | None]:
        """Read the user's suppression from the bucket, ``change`` it and write it
        back if it changed, compare-and-set (eventd/store/kv_cas.py; another node's
        write in between: again);
        returns (before, after)."""
        key = _key(user_id)
        while True:
            try:
                entry = await self._sup.get(key)
                old, revision = _suppression(entry.value) if entry.value else None, entry.revision
            except NotFoundError:  # KeyNotFoundError, KeyDeletedError
                old, revision = None, None
            new = change(old)
            if new == old:
                return old, new
            try:
                if new is None:
                    assert revision is not None
                    written = await kv_cas.delete(self._sup, key, last=revision)
                elif revision is None:
                    written = await kv_cas.create(self._sup, key, orjson.dumps(asdict(new)))
                else:
                    written = await kv_cas.update(
                        self._sup, key, orjson.dumps(asdict(new)), last=revision
                    )
            except KeyWrongLastSequenceError:
                continue
            self._apply(user_id, written, new)
            return old, new

    @unavailable()
    async def suppress(self, user_id: str, erase: bool) -> None:
        def change(old: Suppression | None) -> Suppression:
            if old is None:
                return Suppression(user_id, now_ms(), erase, 0, None)
            if erase and not old.erase:
                return replace(old, erase=True, erased_at=None)
            return old

        await self._update_suppression(user_id, change)

    @unavailable()
    async def unsuppress(self, user_id: str) -> bool:
        old, _ = await self._update_suppression(user_id, lambda old: None)
        return old is not None

    async def pending_erasures(self) -> list[str]:
        return [s.user_id for s in await self.suppressions() if s.erase and not s.erased_at]

    # -- redrive and replay: one node at a time per destination ------------------

    async def _entries(self, pattern: str, bucket: KeyValue | None = None) -> dict[str, Any]:
        """The current (key -> value) of the keys matching ``pattern`` in ``bucket``
        (S_ASIDE unless named)."""
        kv = bucket or self._asides
        # Deletes are delivered too (and dropped here) so that ``last`` passes them:
        # the leader is then asked only about what came after.
        watcher = await kv.watch(pattern)
        out: dict[str, Any] = {}
        last = 0  # the newest revision the watch delivered
        try:
            while True:
                try:
                    entry = await watcher.updates(  # type: ignore[no-untyped-call]
                        timeout=self.js.cfg.publish_timeout
                    )
                except NatsTimeout:  # the end marker never came (seen under load):
                    break  # the leader answers for what follows ``last`` below
                if entry is None:
                    break
                if entry.operation in ("DEL", "PURGE"):
                    out.pop(entry.key, None)
                else:
                    out[entry.key] = entry.value
                last = max(last, entry.revision or 0)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        # The watch's consumer may sit on a replica still catching up, which ends
        # the initial values early (seen: a mark created just before was missed):
        # what was written after them is asked of the stream leader.
        stream, prefix = kv._stream, kv._pre
        while True:
            try:
                msg = await self.js.js.get_msg(
                    stream, seq=last + 1, subject=prefix + pattern, next=True
                )
            except NotFoundError:
                return out
            key = (msg.subject or "").removeprefix(prefix)
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                out.pop(key, None)
            else:
                out[key] = msg.data
            last = int(msg.seq or last + 1)

    async def _hold_aside(self, lease: str) -> bool:
        """Take (or keep) the aside ``lease`` (``aside-<destination>``, or
        ``aside-<destination>.<node>``: :func:`aside_lease`): True while this node
        may resend the work it covers."""
        return await self._held.take(lease)

    async def _aside_groups(self, destination: str, kind: str) -> dict[str, dict[str, Any]]:
        """The destination's ``kind`` (redrive, replay) entries this node may do,
        by the lease that covers them: a shared destination's (and a node-local
        one's that name no node) under ``aside-<destination>``, this node's own
        under ``aside-<destination>.<node id>``; other nodes' are left to them."""
        groups: dict[str, dict[str, Any]] = {}
        for key, value in (await self._entries(f"{kind}.{destination}.*")).items():
            node = _node_of(kind, value)
            if node is None or node == self.node_id:
                groups.setdefault(aside_lease(destination, node), {})[key] = value
        return groups

    async def _aside_work(self, destination: str, kind: str) -> dict[str, Any]:
        """The destination's ``kind`` entries whose lease this node holds (taking
        it); {} otherwise. A lease held with nothing of either kind left under it
        is given back."""
        groups = await self._aside_groups(destination, kind)
        out: dict[str, Any] = {}
        for lease, entries in groups.items():
            if await self._hold_aside(lease):
                out.update(entries)
        idle = [
            lease
            for lease in (aside_lease(destination, None), aside_lease(destination, self.node_id))
            if lease in self._held and lease not in groups
        ]
        idle = list(dict.fromkeys(idle))  # one lease when this node has no id of its own
        if idle:
            other = await self._aside_groups(
                destination, "replay" if kind == "redrive" else "redrive"
            )
            for lease in idle:
                if lease not in other:
                    await self._held.let_go(lease)  # no redrive or replay left under it
        return out

    @unavailable()
    async def dead_letters(
        self, *, destination: str | None = None, since: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        marked = await self._marked()
        names = self.js.names
        last = int((await self.js.js.stream_info(names.dead)).state.last_seq or 0)
        subject = names.dead_subject(destination or "*")
        found = []
        async for dead_id, data in self._messages(names.dead, subject, last, 1):
            d = _dead_letter({"id": dead_id, **orjson.loads(data)})
            if since is not None and d.failed_at < since:
                continue
            found.append(replace(d, state="redrive") if d.id in marked else d)
        return found[:limit]

    @unavailable()
    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters not asked back, by destination: S_DEAD's count per subject
        (the stream leader's) less the redrive marks."""
        names = self.js.names
        info = await self.js.js.stream_info(names.dead, subjects_filter=names.dead_subject(">"))
        prefix = names.dead_subject("")
        counts = {s.removeprefix(prefix): n for s, n in (info.state.subjects or {}).items()}
        for key in await self._entries("redrive.*.*"):
            destination = key.split(".")[1]
            if counts.get(destination):
                counts[destination] -= 1
        return {d: n for d, n in counts.items() if n}

    @unavailable()
    async def request_redrive(self, destination: str | None, ids: Sequence[int] = ()) -> int:
        """Mark the dead letters asked back; the mark's value is the letter's node
        (a node-local destination's: that node resends it), else empty. A letter
        whose node is gone for good (no consumer of its own left: away longer than
        ``storage.retention``) would wait forever: asked by id, nothing is marked
        and :class:`Conflict` names the node; in a redrive of everything it is
        skipped (not counted) and logged. It stays listed until purged."""
        wanted = set(ids)
        asked = [
            d
            for d in await self.dead_letters(destination=destination, limit=2**62)
            if d.state == "dead" and (not wanted or d.id in wanted)
        ]
        live: dict[str, set[str]] = {}  # node-local destination -> its nodes
        gone: list[DeadLetter] = []
        for d in asked:
            if d.node is None or d.destination not in self.local:
                continue
            if d.destination not in live:
                live[d.destination] = await self.js.local_nodes(d.destination)
            if d.node not in live[d.destination]:
                gone.append(d)
        if gone and wanted:
            names = ", ".join(sorted({f"{d.node} ({d.destination})" for d in gone}))
            raise Conflict(
                f"dead letters {sorted(d.id for d in gone)} belong to node {names}, gone for"
                " good (its consumer was removed after storage.retention): no node can resend"
                " them into that node's file; purge them (POST /admin/dead-letters/purge)"
            )
        for d in gone:
            log.warning("dead letter of a node gone for good not redriven", id=d.id, node=d.node)
        marked = 0
        skipped = {d.id for d in gone}
        for d in asked:
            if d.id in skipped:
                continue
            try:
                await kv_cas.create(
                    self._asides, f"redrive.{d.destination}.{d.id}", (d.node or "").encode()
                )
            except KeyWrongLastSequenceError:  # already asked (by another node, meanwhile)
                continue
            marked += 1
        return marked

    async def _marked(self) -> set[int]:
        """Ids of the dead letters asked back (any destination)."""
        return {int(k.rsplit(".", 1)[1]) for k in await self._entries("redrive.*.*")}

    @unavailable()
    async def redrive_batch(self, destination: str, limit: int) -> list[DeadLetter]:
        marks = await self._aside_work(destination, "redrive")
        out: list[DeadLetter] = []
        for dead_id in sorted(int(k.rsplit(".", 1)[1]) for k in marks)[:limit]:
            found = await self.dead_letter(dead_id)
            if found is None:  # purged meanwhile: the mark goes too
                await self._asides.purge(f"redrive.{destination}.{dead_id}")
                continue
            out.append(found)
        return out

    @unavailable()
    async def dead_letter(self, dead_id: int) -> DeadLetter | None:
        try:
            msg = await self.js.js.get_msg(self.js.names.dead, seq=dead_id)
        except Exception:  # nats-py: NotFoundError, or a bad request for a seq past the end
            return None
        if msg.data is None:
            return None
        letter = _dead_letter({"id": dead_id, **orjson.loads(msg.data)})
        if dead_id in await self._marked():
            letter = replace(letter, state="redrive")
        return letter

    @unavailable()
    async def settle_redrive(
        self, delivered: Sequence[int], failed: Sequence[tuple[int, int, str]]
    ) -> None:
        dead = self.js.names.dead
        for dead_id in delivered:
            letter = await self.dead_letter(dead_id)
            await delete_msg(self.js.js, dead, dead_id)
            if letter is not None:
                await self._asides.purge(f"redrive.{letter.destination}.{dead_id}")
        for dead_id, attempts, error in failed:
            letter = await self.dead_letter(dead_id)
            if letter is None:
                continue
            # Dead again: a new copy (a stream's message never changes) with the
            # attempts added, then the old one goes. Its id is the new sequence.
            record = {
                "destination": letter.destination,
                "seq": letter.seq >> EVENT_BITS,
                "offset": letter.seq & _OFFSET,
                "source": letter.source,
                "message_id": letter.message_id,
                "received_at": letter.received_at,
                "body": letter.body.decode(),
                "attempts": letter.attempts + attempts,
                "error": error,
                "failed_at": now_ms(),
                **({"node": letter.node} if letter.node is not None else {}),
            }
            await self.js._publish(
                self.js.names.dead_subject(letter.destination),
                orjson.dumps(record),
                f"dead-again-{dead_id}",
            )
            await delete_msg(self.js.js, dead, dead_id)
            await self._asides.purge(f"redrive.{letter.destination}.{dead_id}")

    @unavailable()
    async def purge_dead_letters(
        self, destination: str | None = None, before: int | None = None
    ) -> int:
        gone = [
            d
            for d in await self.dead_letters(destination=destination, limit=2**62)
            if before is None or d.failed_at < before
        ]
        return await self._delete_dead(gone)

    async def _delete_dead(self, letters: Sequence[DeadLetter]) -> int:
        deleted = 0
        for d in letters:
            if not await delete_msg(self.js.js, self.js.names.dead, d.id):
                continue  # another node deleted it meanwhile
            deleted += 1
            if d.state == "redrive":
                await self._asides.purge(f"redrive.{d.destination}.{d.id}")
        return deleted

    @unavailable()
    async def delete_dead_letters(self, *, failed_before: int, limit: int) -> int:
        """``storage.dead_letter_retention`` on S_DEAD (run by every node: a letter
        another node deleted first is not counted)."""
        old = [d for d in await self.dead_letters(limit=2**62) if d.failed_at < failed_before]
        return await self._delete_dead(old[:limit])

    async def _next_replay_id(self) -> int:
        while True:
            try:
                entry = await self._asides.get("replay-ids")
                n = int(entry.value or b"0") + 1
                await kv_cas.update(
                    self._asides, "replay-ids", str(n).encode(), entry.revision or 0
                )
                return n
            except NotFoundError:
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await kv_cas.create(self._asides, "replay-ids", b"1")
                    return 1
            except KeyWrongLastSequenceError:  # another node took one meanwhile
                continue

    @unavailable()
    async def request_replay(self, destination: str, first: int, last: int) -> None:
        """Queue the range; a node-local destination's once per node that has its
        consumer now (and this one), each record naming its node, which resends it
        into its own file (a node that joins later starts from the log anyway)."""
        nodes: Sequence[str | None] = [None]
        if destination in self.local:
            nodes = sorted((await self.js.local_nodes(destination)) | {self.node_id})
        for node in nodes:
            replay_id = await self._next_replay_id()
            value: dict[str, Any] = {"next_seq": first, "until_seq": last}
            if node is not None:
                value["node"] = node
            await self._asides.put(f"replay.{destination}.{replay_id:012d}", orjson.dumps(value))

    async def _drop_gone_replays(self, destination: str) -> None:
        """Purge a node-local destination's replays of nodes gone for good (no
        consumer left): nobody else may resend them into that node's file."""
        found = await self._entries(f"replay.{destination}.*")
        others = {k: _node_of("replay", v) for k, v in found.items()}
        others = {k: n for k, n in others.items() if n is not None and n != self.node_id}
        if not others:
            return
        live = await self.js.local_nodes(destination)
        for key, node in others.items():
            if node not in live:
                log.warning("replay of a node gone for good dropped", key=key, node=node)
                await self._asides.purge(key)

    @unavailable()
    async def next_replay(self, destination: str) -> Replay | None:
        if destination in self.local:
            await self._drop_gone_replays(destination)
        found = await self._aside_work(destination, "replay")
        if not found:
            return None
        key = min(found)
        value = orjson.loads(found[key])
        return Replay(
            int(key.rsplit(".", 1)[1]), destination, value["next_seq"], value["until_seq"]
        )

    async def _replay_key(self, replay_id: int) -> tuple[str, dict[str, Any]] | None:
        found = await self._entries(f"replay.*.{replay_id:012d}")
        if not found:
            return None
        key, value = next(iter(found.items()))
        return key, orjson.loads(value)

    @unavailable()
    async def advance_replay(self, replay_id: int, next_seq: int) -> None:
        found = await self._replay_key(replay_id)
        if found is not None:
            key, value = found
            await self._asides.put(key, orjson.dumps({**value, "next_seq": next_seq}))

    @unavailable()
    async def finish_replay(self, replay_id: int) -> None:
        found = await self._replay_key(replay_id)
        if found is not None:
            await self._asides.purge(found[0])

    # -- reading the log by seq, time or messageId ---------------------------------

    async def _log_bounds(self) -> tuple[int, int]:
        """(first, last) log sequence as the stream leader reports them."""
        state = (await self.js.js.stream_info(self.js.names.stream)).state
        return int(state.first_seq or 0), int(state.last_seq or 0)

    async def _exists_after(self, stream: str, subject: str, seq: int, until: int) -> bool:
        """Whether ``stream`` still holds a message of ``subject`` in (seq, until]
        (the leader's answer)."""
        try:
            msg = await self.js.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
        except NotFoundError:
            return False
        return msg.seq is not None and msg.seq <= until

    async def _scan(
        self, until: int, *, start: int | None = None, since: int | None = None
    ) -> AsyncIterator[LogMessage]:
        """Log messages from sequence ``start`` (or from the time ``since``, unix ms)
        through sequence ``until``, in order, with their rows."""
        names = self.js.names
        messages = self._messages(names.stream, f"{names.stream}.log.>", until, start, since)
        async for seq, data in messages:
            yield seq, decode_rows(data)

    async def _messages(
        self, stream: str, subject: str, until: int, start: int | None, since: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(sequence, data) of ``stream``'s messages on ``subject`` from sequence
        ``start`` (or the time ``since``, unix ms) through sequence ``until``, in
        order, through an ephemeral consumer. Its end is the sequence, not the
        consumer's pending count: a consumer on a replica catching up reports nothing
        pending; whether a message is still to come (one deleted meanwhile, by an
        erasure or retention, never comes) is asked of the stream leader."""
        if until < 1 or (start is not None and start > until):
            return
        if since is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.fromtimestamp(since / 1000, UTC),
            )
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start or 1)
            )
        config.ack_policy = AckPolicy.NONE
        config.inactive_threshold = 30
        sub = await self.js.js.pull_subscribe(subject, stream=stream, config=config)
        try:
            if since is not None:  # where the server placed the start: the sequence before
                delivered = (await sub.consumer_info()).delivered
                last = int(delivered.stream_seq or 0) if delivered else 0
            else:
                last = (start or 1) - 1
            while True:
                try:
                    msgs = await sub.fetch(FETCH, timeout=1)
                except (TimeoutError, NatsTimeout):
                    if not await self._exists_after(stream, subject, last, until):
                        return
                    continue
                for msg in msgs:
                    last = int(msg.metadata.sequence.stream)
                    if last > until:
                        return
                    yield last, msg.data
                    if last >= until:
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _events(self, first: int, last: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``first`` <= seq <= ``last``, in seq order."""
        out: list[Event] = []
        if limit <= 0:
            return out
        _, log_last = await self._log_bounds()
        async for log_seq, rows in self._scan(
            min(log_last, last >> EVENT_BITS), start=first >> EVENT_BITS
        ):
            for offset, row in enumerate(rows):
                seq = log_seq << EVENT_BITS | offset
                if first <= seq <= last:
                    out.append(_event(log_seq, offset, row))
                    self.seen(seq)
                    if len(out) >= limit:
                        return out
        return out

    @unavailable()
    async def read(self, after: int, limit: int) -> list[Event]:
        return await self._events(after + 1, 2**62, limit)

    @unavailable()
    async def read_range(self, first: int, last: int, limit: int) -> list[Event]:
        return await self._events(first, last, limit)

    @unavailable()
    async def received_at_after(self, seq: int) -> int | None:
        found = await self.read(seq, 1)
        return found[0].received_at if found else None

    @unavailable()
    async def seq_range(self, since: int, until: int) -> SeqRange | None:
        """The events received in [since, until]: a consumer that starts at ``since``
        (a log message is stored after its events were received, so none is before
        it) reads up to the log's end as the leader reports it now (a message stored
        after ``until`` can still hold events received before: a dedup stage that
        was rebuilding), counting by each event's received_at."""
        _, log_last = await self._log_bounds()
        first = last = count = 0
        async for log_seq, rows in self._scan(log_last, since=since):
            for offset, row in enumerate(rows):
                if since <= row[6] <= until:
                    seq = log_seq << EVENT_BITS | offset
                    first = first or seq
                    last = seq
                    count += 1
        return SeqRange(first, last, count) if count else None

    @unavailable()
    async def find_event(self, source: str, message_id: str) -> Event | None:
        """The newest copy: the log read backwards in windows of FIND_WINDOW messages
        (each window forwards), so a recent event is found in the first."""
        log_first, end = await self._log_bounds()
        while end >= max(1, log_first):
            start = max(log_first, end - FIND_WINDOW + 1, 1)
            found: Event | None = None
            async for log_seq, rows in self._scan(end, start=start):
                for offset, row in enumerate(rows):
                    if row[0] == source and row[1] == message_id:
                        found = _event(log_seq, offset, row)
            if found is not None:
                return found
            end = start - 1
        return None

    # -- erasure ----------------------------------------------------------------

    async def _waiting_since(self, user_id: str) -> bool:
        """Whether ``S_IN`` still holds a group acknowledged before the user was
        suppressed and not yet forwarded (its events reach the log after this pass:
        the erasure is not finished, and the retention sweep's next pass takes them)."""
        found = await self.suppression(user_id)
        if found is None:
            return False
        oldest = await self.js.oldest_waiting()
        return oldest is not None and oldest < found.created_at

    @unavailable()
    async def erase_user(
        self, user_id: str, below_seq: int, also: Sequence[int] = ()
    ) -> tuple[int, int, bool]:
        """Delete the user's log events below ``below_seq`` (and those at ``also``)
        and dead letters; see the module docstring for what a message delete
        guarantees and for groups holding other users' events."""
        extra = set(also)
        names = self.js.names
        _, log_last = await self._log_bounds()
        if below_seq >= self._last_seq:
            # "Below all this node has seen": SQLite keeps the newest event there (its
            # seq would be handed out again), the log never hands a sequence out again,
            # and this node may not have seen the newest message yet (another node
            # fetched it): up to the log's end (a trial test erased 4 of 5, pending).
            below_seq = max(below_seq, (log_last + 1) << EVENT_BITS)
        # gone: events whose message this call deleted (each message's delete succeeds
        # on one node only, so two nodes erasing at once count each event once);
        # left: the user's events at or past below_seq, kept this time.
        gone = left = 0
        async for log_seq, rows in self._scan(log_last, start=1):
            self.seen(log_seq << EVENT_BITS | (len(rows) - 1))
            keep: list[EventRow] = []
            erased = 0
            for offset, row in enumerate(rows):
                seq = log_seq << EVENT_BITS | offset
                if row[4] == user_id or seq in extra:
                    if seq < below_seq:
                        erased += 1
                        continue
                    left += 1
                keep.append(row)
            if not erased:
                continue
            if keep:  # other users' events of the group: published again, first (a
                # node erasing at once publishes the same id: the stream keeps one)
                await self.js._publish(
                    names.log_subject(user_partition(keep[0], self.js.cfg.partitions)),
                    encode_rows(keep),
                    f"erase-{log_seq}",
                )
            if await delete_msg(self.js.js, names.stream, log_seq):
                gone += erased
        dead = [d for d in await self.dead_letters(limit=2**62) if _user_of(d.body) == user_id]
        dead_gone = await self._delete_dead(dead)
        done = not left and not await self._waiting_since(user_id)
        at = now_ms()

        def count(old: Suppression | None) -> Suppression | None:
            if old is None:
                return None
            return replace(
                old, erased_events=old.erased_events + gone, erased_at=at if done else None
            )

        await self._update_suppression(user_id, count)
        return gone, dead_gone, done


def aside_lease(destination: str, node: str | None) -> str:
    """The ``S_LEASES`` key under which one node at a time resends a destination's
    redrives and replays: ``aside-<destination>``, or for a node-local destination's
    work of one node, ``aside-<destination>.<node id>`` ('@' is not a key character;
    a node id is ``[A-Za-z0-9_-]``, so '.' parts it from the name)."""
    return f"aside-{destination}.{node}" if node else f"aside-{destination}"


def _node_of(kind: str, value: bytes | None) -> str | None:
    """The node an S_ASIDE entry of ``kind`` names (a redrive mark's value, a
    replay record's ``node``), or None: any node under the destination's lease."""
    if not value:
        return None
    if kind == "redrive":
        return value.decode() or None
    node = orjson.loads(value).get("node")
    return str(node) if node else None


def _suppression(value: bytes) -> Suppression:
    return Suppression(**orjson.loads(value))


def _dead_letter(record: dict[str, Any]) -> DeadLetter:
    """A dead letter as S_DEAD keeps it (JetStreamStore.dead_letter's record)."""
    return DeadLetter(
        id=int(record["id"]),
        destination=record["destination"],
        seq=int(record["seq"]) << EVENT_BITS | int(record["offset"]),
        source=record["source"],
        message_id=record["message_id"],
        received_at=int(record["received_at"]),
        body=record["body"].encode(),
        attempts=int(record["attempts"]),
        error=record["error"],
        failed_at=int(record["failed_at"]),
        state="dead",
        node=record.get("node"),
    )
