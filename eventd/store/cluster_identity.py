"""The identity graph's state on the JetStream cluster: the cluster store's
:class:`~eventd.store.base.IdentityBackend`, shared by every node (issue 15, item 8).

Two key-value buckets, names derived from ``storage.stream`` (S)::

    S_ID       p.<profile_id>          the profile's record (graph.Profile.record())
               i.u.<id> / i.a.<id>     an identifier -> its profile_id
               la.<anonymousId>        that anonymousId's links [[user, linked_at, seq]]
                                       (not the rows recording a userId's membership:
                                       writers before 938b8dd kept them all under
                                       ``la._``, one value for every user)
               lu.<userId>             the anonymousIds linked to that user ('' for its
                                       membership row)
               t.<key>.<first>         the seqs of one identifier's events in one page
               pos.<destination>       a warehouse feed's links version
               s.cursor                the last log event seq applied
               s.page / s.page.<n>     the page being applied (write-ahead, below)
    S_IDLINKS  <anonymousId>.<userId>  [linked_at, seq]; the entry's revision (its
                                       message sequence in the bucket's stream) is
                                       the link's ``version``: a new link or one whose
                                       profile changed is put again and comes after
                                       every feed's position; history 1 keeps only
                                       the current revision, so reading the stream
                                       from a version gives each link once

Identifiers are user text: a key holds each as ``_`` + base64url without padding
(:func:`enc`), so any string is a valid key. Deleted entries are purged by subject
(no delete marker left behind): counts are the buckets' message counts. Reads go to
each stream's leader (``allow_direct`` off): a reader never sees a replica that
has not caught up with a write acknowledged to the writer.

**One writer, anywhere.** The writer side (``open_writer``, ``apply``, ``erase``...)
holds the lease ``identity-writer`` in ``S_LEASES`` (the dedup stages' bucket, its
TTL 10 s), renewed every 3 s; a node that does not hold it gets
:class:`~eventd.store.base.NotLeader` and stays a reader. A writer stops writing
once its lease may have lapsed (the dedup stages' rule, docs/scaling.md), so two
writers never apply pages at once; a crashed holder's lease lapses with the TTL and
another node's writer takes over from the cursor, which lives here.

**All or nothing.** A page's changes are many keys, and a bucket has no
transaction: ``apply`` first puts the whole page (its changes, the links versions'
order and the cursor past it) under ``s.page`` (in parts of at most ~400 KB: a
message is at most 1 MB), then writes each key, then the cursor. Every write is an
idempotent put, so a writer that crashed between the record and the cursor is
finished by the next writer (it finds ``s.page`` past the cursor when it takes the
lease) and nothing is applied twice or half. Readers may see a page's keys before
its cursor: stitched delivery reads only links made before an event whose seq the
cursor has passed, so it never depends on a page in progress.

Every call here is synchronous (the graph's protocol); each side runs the nats
client on an event loop thread of its own (:class:`Bridge`): the writer's in the
writer process, the readers' in eventd's. A page's keys are put and read in bulk,
pipelined on that one connection (``_Side.puts`` / ``gets``), not one nats-py
request each (measured: 4,200 -> ~16,000 events per CPU-second of the writer).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from eventd import codec
from eventd.config import JetStreamConfig
from eventd.identity.graph import ANONYMOUS, USER, Changes, Graph, Link, Profile
from eventd.identity.links import IdentityLink
from eventd.store.base import NotLeader, StorageUnavailable
from eventd.store.identity import (
    ReaderThread,
    anonymous_seqs,
    key_of,
    link_time,
    timeline_seqs,
)
from eventd.store.jetstream import LEASE_RENEW, LEASE_TTL, Names, connect
from eventd.store.leases import HeldLeases
from eventd.tasks import AGAIN_AFTER, cancel, finish

log = structlog.get_logger("eventd.store.cluster_identity")

T = TypeVar("T")
CLOSE_STEP = 2.0  # seconds each step of Bridge.close() may take
CALL_TIMEOUT = 60.0  # seconds one synchronous call may wait on the cluster
LEASE_KEY = "identity-writer"
PAGE_PART_BYTES = 400_000  # a write-ahead part: well under nats' 1 MB message
CONCURRENT = 256  # writes in flight at once


def enc(value: str) -> str:
    """An identifier as a key token: ``_`` + base64url, unpadded (any text is valid)."""
    return "_" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def dec(token: str) -> str:
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


class Bridge:
    """A nats connection on an event loop thread of its own, for synchronous callers."""

    def __init__(
        self, cfg: JetStreamConfig, name: str, made: Callable[[Bridge], None] = lambda b: None
    ) -> None:
        """``made``: called with the bridge before it connects (connecting waits for
        the cluster: whoever may have to :meth:`abort` it needs it by then)."""
        self.loop = asyncio.new_event_loop()
        self._aborted = False
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        made(self)
        try:
            self.nc: NATS = self.run(connect(cfg, name))
        except BaseException:
            self._stop_loop()
            raise
        self.js: JetStreamContext = self.nc.jetstream(timeout=cfg.publish_timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """``coro`` on the bridge's loop; its result or its exception, here (RuntimeError
        once :meth:`abort` ran: its loop stopped, nothing would answer)."""
        if self._aborted:
            coro.close()
            raise RuntimeError("the identity store's connection was dropped (a stop)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Close the connection and stop the loop, within about 3 x CLOSE_STEP
        seconds even when the cluster does not answer: the caller is often a
        worker thread the interpreter waits for at exit (a trial's node, stopped
        during a quorum loss, logged ``eventd stopped`` and exited 40 s later); at once
        after :meth:`abort`."""
        if self._aborted:
            self._stop_loop()
            return
        with contextlib.suppress(Exception):
            self.run(self.nc.close(), CLOSE_STEP)
        with contextlib.suppress(Exception):
            # a watcher's, nats-py's own: none left pending
            self.run(_cancel_others(), CLOSE_STEP)
        self._stop_loop()

    def abort(self) -> None:
        """Stop now, from any thread, waiting for nothing: every task on the loop is
        cancelled (a synchronous caller waiting in :meth:`run` gets CancelledError at
        once, not after CALL_TIMEOUT), then the loop stops; the connection is dropped
        with the process (the loop's thread is a daemon). For a stop that cannot wait:
        :meth:`close` gives the cluster up to 3 x CLOSE_STEP seconds to answer."""
        self._aborted = True

        async def abort() -> None:
            me = asyncio.current_task()
            await cancel(*(t for t in asyncio.all_tasks() if t is not me), within=CLOSE_STEP)
            self.loop.stop()

        with contextlib.suppress(RuntimeError):  # the loop is closed already
            asyncio.run_coroutine_threadsafe(abort(), self.loop)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLOSE_STEP)
        if not self._thread.is_alive():
            self.loop.close()  # a loop still running cannot be closed: left to exit


async def _cancel_others() -> None:
    """Cancel every other task on this loop and wait for them."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _bucket(
    js: JetStreamContext, name: str, replicas: int, ttl: float | None = None
) -> KeyValue:
    """Bind the bucket, creating it when new (history 1; read from its leader)."""
    try:
        return await js.key_value(name)
    except NotFoundError:  # nats-py's BucketNotFoundError
        config = KeyValueConfig(
            bucket=name,
            history=1,
            replicas=replicas,
            storage=StorageType.FILE,
            direct=False,
            ttl=ttl,
        )
        return await js.create_key_value(config)


async def _gather(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``coros`` CONCURRENT at a time, results in order."""
    limit = asyncio.Semaphore(CONCURRENT)

    async def one(c: Awaitable[T]) -> T:
        async with limit:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def graph_cursor(js: JetStreamContext, stream: str) -> int | None:
    """The shared graph's cursor (the last event seq it applied, 0 before the first
    page), or None when the graph's bucket does not exist (no node ran it): what the
    cluster's retention must keep (eventd/store/cluster.py, ``delete_events``)."""
    try:
        state = await js.key_value(f"{stream}_ID")
    except NotFoundError:  # nats-py's BucketNotFoundError
        return None
    try:
        entry = await state.get("s.cursor")
    except KeyNotFoundError:
        return 0
    return int(orjson.loads(entry.value)) if entry.value else 0


class _Side:
    """One side's connection and buckets (the writer's or the readers')."""

    def __init__(
        self,
        cfg: JetStreamConfig,
        names: Names,
        role: str,
        made: Callable[[Bridge], None] = lambda b: None,
    ) -> None:
        """``made``: as :class:`Bridge`'s."""
        self.bridge = Bridge(cfg, f"eventd-identity-{role}-{os.getpid()}", made)
        self.names = names
        try:
            self.state, self.links, self.leases = self.bridge.run(self._open(cfg.replicas))
        except BaseException:
            self.bridge.close()
            raise

    async def _open(self, replicas: int) -> tuple[KeyValue, KeyValue, KeyValue]:
        js, n = self.bridge.js, self.names
        return (
            await _bucket(js, f"{n.stream}_ID", replicas),
            await _bucket(js, f"{n.stream}_IDLINKS", replicas),
            # The dedup stages' bucket (the cluster store's open() makes it the same way).
            await _bucket(js, n.leases, replicas, ttl=LEASE_TTL),
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.bridge.run(coro)

    async def _pipelined(self, requests: list[tuple[str, bytes]]) -> list[Any]:
        """Send every (subject, payload) at once, each with a reply subject of one inbox
        of ours, and return the decoded JSON answers in order. One request at a time
        through nats-py (a future, an inbox and a reply parse each) cost ~300 us of
        CPU per key: a page writes thousands. Sent in order on one connection, so a
        stream stores them in that order. Raises TimeoutError when some answer does
        not come within CALL_TIMEOUT (nothing is known of those: callers redo all)."""
        if not requests:
            return []
        nc = self.bridge.nc
        inbox = nc.new_inbox()
        answers: list[Any] = [None] * len(requests)
        left = len(requests)
        done = asyncio.get_running_loop().create_future()

        async def answered(msg: Msg) -> None:
            nonlocal left
            i = int(msg.subject.rsplit(".", 1)[1])
            if answers[i] is None:
                # No data: a status (503 no responders: the stream has no leader).
                answers[i] = orjson.loads(msg.data) if msg.data else {"error": msg.headers}
                left -= 1
                if not left and not done.done():
                    done.set_result(None)

        sub = await nc.subscribe(f"{inbox}.*", cb=answered)
        try:
            for i, (subject, payload) in enumerate(requests):
                await nc.publish(subject, payload, reply=f"{inbox}.{i}")
            await asyncio.wait_for(done, CALL_TIMEOUT)
        finally:
            await sub.unsubscribe()
        return answers

    async def puts(self, bucket: KeyValue, items: Iterable[tuple[str, bytes]]) -> None:
        """Put every (key, value) into ``bucket``, pipelined, in order; raises
        RuntimeError naming the first refusal."""
        answers = await self._pipelined([(f"$KV.{bucket._name}.{k}", v) for k, v in items])
        for a in answers:
            if "error" in a:
                raise RuntimeError(f"identity bucket {bucket._name} refused a put: {a['error']}")

    async def gets(self, keys: Iterable[str], bucket: KeyValue | None = None) -> list[bytes | None]:
        """The values of ``keys`` (None: no such key), read from the stream's leader."""
        name = (bucket or self.state)._name
        api = f"$JS.API.STREAM.MSG.GET.KV_{name}"
        answers = await self._pipelined(
            [(api, orjson.dumps({"last_by_subj": f"$KV.{name}.{k}"})) for k in keys]
        )
        out: list[bytes | None] = []
        for a in answers:
            if "message" in a:
                out.append(base64.b64decode(a["message"].get("data") or ""))
            elif a.get("error", {}).get("code") == 404:
                out.append(None)
            else:
                raise RuntimeError(f"identity bucket {name} refused a read: {a.get('error')}")
        return out

    async def gets_json(self, keys: Iterable[str], default: Any) -> list[Any]:
        """Decoded values; a copy of ``default`` for each missing key (callers change them)."""
        return [
            copy.copy(default) if raw is None else orjson.loads(raw)
            for raw in await self.gets(keys)
        ]

    async def get(self, key: str, bucket: KeyValue | None = None) -> bytes | None:
        try:
            entry = await (bucket or self.state).get(key)
        except KeyNotFoundError:
            return None
        return entry.value

    async def get_json(self, key: str, default: Any) -> Any:
        raw = await self.get(key)
        return default if raw is None else orjson.loads(raw)

    async def purge(self, bucket: KeyValue, key: str) -> None:
        """Remove ``key`` with no delete marker (counts stay the live keys)."""
        stream = f"KV_{bucket._name}"  # nats-py keeps the bucket's name private
        await self.bridge.js.purge_stream(stream, subject=f"$KV.{bucket._name}.{key}")

    async def scan(
        self, bucket: KeyValue, pattern: str, after: int = 0, limit: int | None = None
    ) -> list[tuple[str, bytes, int]]:
        """(key, value, revision) of the keys matching ``pattern`` (a subject wildcard),
        with a revision past ``after``, in revision order, at most ``limit``: one
        ephemeral consumer whose pending count, read when made, says how many to
        fetch (no wait on a timeout to learn that there are none)."""
        name = bucket._name
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE
            if after
            else DeliverPolicy.LAST_PER_SUBJECT,
            opt_start_seq=after + 1 if after else None,
        )
        sub = await self.bridge.js.pull_subscribe(
            f"$KV.{name}.{pattern}", stream=f"KV_{name}", config=config
        )
        out: list[tuple[str, bytes, int]] = []
        try:
            left = int((await sub.consumer_info()).num_pending or 0)
            if limit is not None:
                left = min(left, limit)
            prefix = len(f"$KV.{name}.")
            while left > 0:
                for msg in await sub.fetch(min(left, 256), timeout=CALL_TIMEOUT):
                    out.append((msg.subject[prefix:], msg.data, msg.metadata.sequence.stream))
                    left -= 1
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    def close(self) -> None:
        self.bridge.close()


def _links_record(entries: list[list[Any]], anonymous_id: str) -> list[Link]:
    return [Link(anonymous_id or None, u, at, seq) for u, at, seq in entries]


class ClusterIdentityStore(ReaderThread):
    """The identity backend on the cluster (see the module docstring). Pickled (to the
    writer process), it is its settings: nothing open crosses."""

    in_process = False  # the writer runs in a process of its own, as on SQLite

    def __init__(self, cfg: JetStreamConfig, node: str | None = None) -> None:
        """``node``: the lease's holder as a user reads it (ClusterStore's: the node's
        id, its ``node-id`` file); None: this process's own."""
        self.cfg = cfg
        self.names = Names(cfg.stream)
        self.node = node or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._w: _Side | None = None
        self._r: _Side | None = None
        # The writer's lease (held in the writer process, on its bridge's loop): the
        # dedup stages' rules (eventd/store/leases.py), one key.
        self.lease = HeldLeases(lambda: self.w.leases, self.node, LEASE_TTL)
        self._renewer: concurrent.futures.Future[None] | None = None
        self._led_before = False  # taken once already: taking it again means a reload
        self._lease_lock = asyncio.Lock()  # renewals and takes, on the writer's loop
        self._watcher: concurrent.futures.Future[None] | None = None
        # The readers' connection, known from before it connects (abort_reader drops it)
        self._reader_bridge: Bridge | None = None

    def __getstate__(self) -> tuple[JetStreamConfig, str]:
        return self.cfg, self.node

    def __setstate__(self, state: tuple[JetStreamConfig, str]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    # -- the writer's life cycle and lease ---------------------------------------------

    def open_writer(self) -> None:
        """Connect, then take the writer's lease (:class:`NotLeader` when another node
        holds it) and finish a page a crashed writer left."""
        if self._w is None:
            self._w = _Side(self.cfg, self.names, "writer")
        self._lead()

    @property
    def w(self) -> _Side:
        if self._w is None:
            raise NotLeader("the identity writer is not open")
        return self._w

    def _lead(self) -> None:
        """Hold the lease: renew ours, or take it when free (then finish a page a
        crashed writer left). Raises NotLeader when another node holds it, and once
        after taking it anew when this writer held it before: another writer may have
        applied pages meanwhile, so the caller reads the cursor again and the graph
        drops its cache (eventd/identity/writer.py: ``cursor``)."""
        if self.lease.holds(LEASE_KEY):
            return
        w = self.w
        if w.run(self._hold()):
            return  # still ours all along: nobody else wrote
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.run_coroutine_threadsafe(self._renew(), w.bridge.loop)
        log.info("identity writer lease taken", node=self.node)
        w.run(self._recover())
        if self._led_before:
            raise NotLeader("the identity writer's lease lapsed and was taken again")
        self._led_before = True

    async def _hold(self) -> bool:
        """Renew our lease (True); else create it (False: taken anew; NotLeader when
        another node holds it). :meth:`HeldLeases.holds` turns false at when the
        request was sent plus the TTL, less a slack."""
        async with self._lease_lock:  # a renewal and a take never race on the revision
            if LEASE_KEY in self.lease and await self.lease.take(LEASE_KEY):
                return True
            if not await self.lease.take(LEASE_KEY):  # lapsed and another node took it
                raise NotLeader("another node's identity writer holds the lease")
            return False

    async def _renew(self) -> None:
        """Renew the lease every LEASE_RENEW s while held; never takes it anew (only
        :meth:`_lead` does, which makes the writer reload). A stall: the next round."""
        while True:
            await asyncio.sleep(LEASE_RENEW)
            async with self._lease_lock:
                await self.lease.renew()  # held keys only: one lost is dropped

    def _check(self) -> None:
        """Raise NotLeader before writing once the lease may have lapsed."""
        if not self.lease.holds(LEASE_KEY):
            raise NotLeader("the identity writer's lease lapsed unrenewed")

    def close(self) -> None:
        """End the renewals, give the lease back (within CLOSE_STEP: during a quorum
        loss nothing answers, and it lapses with the TTL) and close the connection."""
        if self._w is None:
            return
        w = self._w
        if self._renewer is not None:
            w.bridge.loop.call_soon_threadsafe(self._renewer.cancel)
        with contextlib.suppress(Exception):  # let go now: another node takes over next
            w.bridge.run(finish(self.lease.stop(), CLOSE_STEP), CLOSE_STEP + AGAIN_AFTER + 1.0)
        w.close()
        self._w = None

    # -- the graph's backing (the writer) ----------------------------------------------

    def cursor(self) -> int:
        self._lead()
        return int(self.w.run(self.w.get_json("s.cursor", 0)))

    def profile_of(self, kind: str, value: str) -> str | None:
        raw = self.w.run(self.w.get(f"i.{kind}.{enc(value)}"))
        return None if raw is None else raw.decode()

    def profile(self, profile_id: str) -> Profile | None:
        raw = self.w.run(self.w.get(f"p.{profile_id}"))
        return None if raw is None else Profile.from_record(codec.loads(raw))

    def links_of(self, anonymous_id: str) -> list[Link]:
        entries = self.w.run(self.w.get_json(f"la.{enc(anonymous_id)}", []))
        return _links_record(entries, anonymous_id)

    def prefetch(
        self, graph: Graph, ids: Iterable[tuple[str, str]], linking: Iterable[str] = ()
    ) -> None:
        wanted, anons = list(set(ids)), list(set(linking))

        async def read() -> tuple[list[str | None], list[Profile | None], list[list[Link]]]:
            w = self.w
            pids = [
                None if raw is None else raw.decode()
                for raw in await w.gets(f"i.{k}.{enc(v)}" for k, v in wanted)
            ]
            unique = sorted({p for p in pids if p is not None})
            bodies = await w.gets(f"p.{pid}" for pid in unique)
            profiles = [None if b is None else Profile.from_record(codec.loads(b)) for b in bodies]
            links = await w.gets_json((f"la.{enc(a)}" for a in anons), [])
            found = dict(zip(unique, profiles, strict=True))
            return (
                pids,
                [found[p] for p in unique],
                [_links_record(e, a) for e, a in zip(links, anons, strict=True)],
            )

        pids, profiles, links = self.w.run(read())
        graph.seed(
            dict(zip(wanted, pids, strict=True)),
            {p.profile_id: p for p in profiles if p is not None},
            dict(zip(anons, links, strict=True)),
        )

    def apply(self, changes: Changes, cursor: int) -> None:
        """Write-ahead the page, write it, then the cursor (module docstring)."""
        for link in changes.links:  # checked before anything is written
            if not isinstance(link.user_id, str) or not isinstance(link.linked_at, str):
                raise ValueError(f"a link needs a userId and a linked_at: {link}")
        self._lead()
        record = page_record(changes, cursor)
        self.w.run(self._log_page(record))
        self.w.run(self._write_page(record))

    async def _log_page(self, record: dict[str, Any]) -> None:
        """``record`` under ``s.page`` (parts first, the head last: the head is the commit)."""
        data = orjson.dumps(record)
        parts = [data[i : i + PAGE_PART_BYTES] for i in range(0, len(data), PAGE_PART_BYTES)]
        self._check()
        w = self.w
        await w.puts(w.state, ((f"s.page.{i}", part) for i, part in enumerate(parts)))
        self._check()
        await w.state.put("s.page", orjson.dumps({"cursor": record["cursor"], "parts": len(parts)}))

    async def _recover(self) -> None:
        """Finish the page a writer recorded and did not finish (its cursor not written)."""
        w = self.w
        head = await w.get_json("s.page", None)
        if head is None or head["cursor"] <= await w.get_json("s.cursor", 0):
            return
        parts = await w.gets(f"s.page.{i}" for i in range(head["parts"]))
        if any(p is None for p in parts):  # cannot be: the head is put after its parts
            raise RuntimeError("the identity page record is incomplete")
        record = orjson.loads(b"".join(p for p in parts if p is not None))
        log.warning("finishing the identity page a writer left", cursor=record["cursor"])
        await self._write_page(record)

    async def _write_page(self, r: dict[str, Any]) -> None:
        w = self.w
        self._check()
        puts = [(f"p.{p['profile_id']}", codec.dumps(p)) for p in r["profiles"]]
        puts += [(f"i.{k}.{enc(v)}", pid.encode()) for k, v, pid in r["ids"]]
        puts += [
            (f"t.{enc(key_of(k, v))}.{seqs[0]}", orjson.dumps(seqs)) for k, v, seqs in r["events"]
        ]
        await w.puts(w.state, puts)
        await _gather(w.purge(w.state, f"p.{pid}") for pid in r["removed"])
        # Links: each anonymousId's and each user's index, read, changed and put once.
        # A userId's membership row (anonymousId "") is known from the user's index
        # alone: under "" the anonymousIds' index would be one value listing every user
        # ever, read and put whole by every page, past a message's 1 MB at ~19,000 users.
        anons = sorted({a for a, *_ in r["links"] if a})
        users = sorted({u for _, u, *_ in r["links"]} | set(r["resend"]))
        by_anon = dict(
            zip(anons, await w.gets_json((f"la.{enc(a)}" for a in anons), []), strict=True)
        )
        by_user = dict(
            zip(users, await w.gets_json((f"lu.{enc(u)}" for u in users), []), strict=True)
        )
        new: list[tuple[str, str, str, int]] = []
        for anon, user, linked_at, seq in r["links"]:
            if anon:
                if any(e[0] == user for e in by_anon[anon]):
                    continue
                by_anon[anon].append([user, linked_at, seq])
            elif anon in by_user[user]:
                continue
            by_user[user].append(anon)
            new.append((anon, user, linked_at, seq))
        # A link's revision is its version: puts sent in the graph's order (one
        # connection keeps it, and the stream numbers them as they come), awaited
        # together. Before the indexes: a page finished again after a crash finds a
        # link new until its index says otherwise (put twice at worst: a feed sends
        # it again).
        self._check()
        await w.puts(
            w.links,
            ((f"{enc(anon)}.{enc(user)}", orjson.dumps([at, seq])) for anon, user, at, seq in new),
        )
        self._check()
        await w.puts(w.state, ((f"la.{enc(a)}", orjson.dumps(e)) for a, e in by_anon.items()))
        await w.puts(w.state, ((f"lu.{enc(u)}", orjson.dumps(e)) for u, e in by_user.items()))
        resend = [f"{enc(a)}.{enc(u)}" for u in r["resend"] for a in sorted(by_user[u])]
        values = await w.gets(resend, w.links)
        self._check()
        await w.puts(  # again: after every feed's position
            w.links,
            ((key, value) for key, value in zip(resend, values, strict=True) if value is not None),
        )
        self._check()
        await w.state.put("s.cursor", orjson.dumps(r["cursor"]))

    def erase(self, user_id: str) -> list[int]:
        """As SQLite's; the profile goes last, so an erasure cut short is finished by the
        next call (which finds the profile still there)."""
        self._lead()
        pid = self.profile_of(USER, user_id)
        profile = None if pid is None else self.profile(pid)
        if pid is None or profile is None:
            return []
        seqs = anonymous_seqs(profile, self.links_of, self._between)
        self.w.run(self._erase(pid, profile, set(seqs)))
        return sorted(seqs)

    async def _erase(self, pid: str, profile: Profile, gone: set[int]) -> None:
        w = self.w
        self._check()
        owned = [(USER, u) for u in profile.user_ids] + [
            (ANONYMOUS, a) for a in profile.anonymous_ids
        ]
        for kind, ident in owned:  # a shared anonymousId may be another's now
            key = f"i.{kind}.{enc(ident)}"
            if await w.get(key) == pid.encode():
                await w.purge(w.state, key)
        users = set(profile.user_ids)
        for user in users:
            for anon in await w.get_json(f"lu.{enc(user)}", []):
                await w.purge(w.links, f"{enc(anon)}.{enc(user)}")
                # The membership row's "" too: its index is written no more, but one a
                # writer made before may hold the user, who must be gone from it as well.
                kept = [e for e in await w.get_json(f"la.{enc(anon)}", []) if e[0] not in users]
                if kept:
                    await w.state.put(f"la.{enc(anon)}", orjson.dumps(kept))
                else:
                    await w.purge(w.state, f"la.{enc(anon)}")
            await w.purge(w.state, f"lu.{enc(user)}")
            for key, _, _ in await w.scan(w.state, f"t.{enc(key_of(USER, user))}.*"):
                await w.purge(w.state, key)
        for anon in profile.anonymous_ids:
            for key, value, _ in await w.scan(w.state, f"t.{enc(key_of(ANONYMOUS, anon))}.*"):
                seqs: list[int] = orjson.loads(value)
                kept_seqs = [s for s in seqs if s not in gone]
                if len(kept_seqs) == len(seqs):
                    continue
                await w.purge(w.state, key)
                if kept_seqs:
                    row = f"{key.rsplit('.', 1)[0]}.{kept_seqs[0]}"
                    await w.state.put(row, orjson.dumps(kept_seqs))
        self._check()
        await w.purge(w.state, f"p.{pid}")

    def _between(self, key: str, lo: int, hi: int) -> list[int]:
        return self._rows(self.w, key, lo, hi)

    def _rows(self, side: _Side, key: str, lo: int, hi: int) -> list[int]:
        """The seqs filed under timeline ``key`` in [lo, hi), ascending."""
        rows = side.run(side.scan(side.state, f"t.{enc(key)}.*"))
        found: list[int] = []
        for _, value, _ in rows:
            found += [s for s in orjson.loads(value) if lo <= s < hi]
        return sorted(found)

    def save_position(self, destination: str, version: int) -> None:
        self._lead()
        self.w.run(self.w.state.put(f"pos.{enc(destination)}", orjson.dumps(version)))

    # -- the readers -------------------------------------------------------------------

    async def open_reader(self) -> None:
        """Connect the readers' side (on the reader thread: connecting blocks); may be
        called again after it raised."""
        self._start_reader()
        if self._r is None:
            self._r = await self.read(_Side, self.cfg, self.names, "reader", self._made_reader)

    def _made_reader(self, bridge: Bridge) -> None:
        self._reader_bridge = bridge

    async def close_reader(self) -> None:
        if self._r is not None and self._watcher is not None:
            self._r.bridge.loop.call_soon_threadsafe(self._watcher.cancel)
        await super().close_reader()

    def abort_reader(self) -> None:
        """The readers' connection dropped now (:meth:`Bridge.abort`): its watcher, the
        erasures' subscription and a read in flight on the reader thread (its opening
        too) end with it, so neither that thread nor the connection outlives the stop
        (issue 14's fourth trial: the reader's connection went on past ``eventd
        stopped``)."""
        if self._reader_bridge is not None:
            self._reader_bridge.abort()
        super().abort_reader()

    @property
    def r(self) -> _Side:
        assert self._r is not None, "identity store reader not open"
        return self._r

    def watch_cursor(self, seen: Callable[[int], None]) -> None:
        """Call ``seen(cursor)`` (on the reader's loop thread) with the graph's cursor
        now and after every page any node's writer applies: how a node that does not
        write knows how far the shared graph has got (stitched delivery waits on it)."""
        r = self.r

        async def watch() -> None:
            while True:
                try:
                    watcher = await r.state.watch("s.cursor")
                    async for entry in watcher:
                        if entry is not None and entry.value:
                            seen(int(orjson.loads(entry.value)))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a lost server: watch again
                    log.info("identity cursor watch restarted", error=repr(exc))
                    await asyncio.sleep(1.0)

        self._watcher = asyncio.run_coroutine_threadsafe(watch(), r.bridge.loop)

    # -- erasure asked of the leading node (issue 15, item 7) ---------------------------

    @property
    def _erase_subject(self) -> str:
        return f"{self.names.stream}.identity.erase"

    async def _on_reader(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the readers' connection's loop and wait for it from ours."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.r.bridge.loop))

    async def serve_erasures(
        self,
        erase: Callable[[str], Coroutine[Any, Any, list[int] | None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Every node listens (core NATS, ``<stream>.identity.erase``); only the leading
        writer's ``erase`` answers, the others' return None and stay silent."""
        nc = self.r.bridge.nc

        async def answer(msg: Msg) -> None:
            ask = asyncio.run_coroutine_threadsafe(erase(msg.data.decode()), loop)
            try:
                seqs = await asyncio.wrap_future(ask)
            except Exception as exc:  # the leader failed: the asking node says why
                await msg.respond(orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                return
            if seqs is not None:
                await msg.respond(orjson.dumps({"seqs": seqs}))

        async def subscribe() -> None:
            await nc.subscribe(self._erase_subject, cb=answer)

        await self._on_reader(subscribe())

    async def forward_erase(self, user_id: str) -> list[int]:
        nc = self.r.bridge.nc

        async def ask() -> Any:
            msg = await nc.request(self._erase_subject, user_id.encode(), timeout=CALL_TIMEOUT)
            return orjson.loads(msg.data)

        try:
            answer = await self._on_reader(ask())
        except Exception as exc:  # nats' timeout or no responders: no writer leads now
            raise StorageUnavailable(
                f"no node's identity writer erased the profile within {CALL_TIMEOUT:g}s"
                f" ({type(exc).__name__}); the erasure stays pending"
            ) from exc
        if "error" in answer:
            raise StorageUnavailable(f"the identity writer failed to erase: {answer['error']}")
        return [int(seq) for seq in answer["seqs"]]

    def find(self, kind: str, value: str) -> Profile | None:
        return self.find_many([(kind, value)]).get((kind, value))

    def find_many(self, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Profile]:
        keys = list(set(ids))
        r = self.r

        async def read() -> dict[tuple[str, str], Profile]:
            pids = await r.gets(f"i.{k}.{enc(v)}" for k, v in keys)
            found = [(key, p.decode()) for key, p in zip(keys, pids, strict=True) if p is not None]
            bodies = await r.gets(f"p.{pid}" for _, pid in found)
            return {
                key: Profile.from_record(codec.loads(b))
                for (key, _), b in zip(found, bodies, strict=True)
                if b is not None
            }

        return r.run(read())

    def links(self, anonymous_ids: Iterable[str]) -> dict[str, list[Link]]:
        anons = list(set(anonymous_ids))
        r = self.r
        entries = r.run(r.gets_json((f"la.{enc(a)}" for a in anons), []))
        return {a: _links_record(e, a) for a, e in zip(anons, entries, strict=True) if e}

    def timeline(self, profile: Profile, before: int, limit: int) -> list[int]:
        def newest(key: str, lo: int, hi: int, n: int) -> list[int]:
            return self._rows(self.r, key, lo, hi)[::-1][:n]

        return timeline_seqs(profile, self.links(profile.anonymous_ids), before, limit, newest)

    def links_after(self, version: int, limit: int) -> list[tuple[int, IdentityLink]]:
        r = self.r

        async def read() -> list[tuple[int, IdentityLink]]:
            rows = await r.scan(r.links, ">", after=version, limit=limit)
            pairs = [tuple(dec(t) for t in key.split(".")) for key, _, _ in rows]
            pids = await r.gets(f"i.{USER}.{enc(user)}" for _, user in pairs)
            out = []
            for (_, value, revision), (anon, user), pid in zip(rows, pairs, pids, strict=True):
                if pid is not None:  # as SQLite's join: a link of an erased user is gone
                    linked_at = orjson.loads(value)[0]
                    link = IdentityLink(anon or None, user, pid.decode(), link_time(linked_at))
                    out.append((revision, link))
            return out

        return r.run(read())

    def position(self, destination: str) -> int:
        return int(self.r.run(self.r.get_json(f"pos.{enc(destination)}", 0)))

    def counts(self) -> dict[str, int]:
        r = self.r

        async def read() -> dict[str, int]:
            js, s = r.bridge.js, self.names.stream

            async def subjects(stream: str, pattern: str) -> int:
                info = await js.stream_info(stream, subjects_filter=pattern)
                return len(info.state.subjects or {})

            return {
                "profiles": await subjects(f"KV_{s}_ID", f"$KV.{s}_ID.p.>"),
                "identifiers": await subjects(f"KV_{s}_ID", f"$KV.{s}_ID.i.>"),
                "links": int((await js.stream_info(f"KV_{s}_IDLINKS")).state.messages),
            }

        return r.run(read())


def page_record(changes: Changes, cursor: int) -> dict[str, Any]:
    """A page's changes and the cursor past it as plain JSON (the write-ahead record)."""
    return {
        "cursor": cursor,
        "profiles": [p.record() for p in changes.profiles.values()],
        # Not those made in this page (most anonymous profiles, merged into their user's
        # at sign-in): the bucket never held them, and each purge is a request of its own.
        "removed": sorted(changes.removed - changes.profiles.keys() - changes.created),
        "ids": [[k, v, pid] for (k, v), pid in changes.ids.items()],
        "links": [[x.anonymous_id or "", x.user_id, x.linked_at, x.seq] for x in changes.links],
        "resend": sorted(changes.resend_users),
        "events": [[k, v, seqs] for (k, v), seqs in changes.events.items()],
    }
