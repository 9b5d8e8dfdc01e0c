"""The identity service on a real SQLite store and a real identity.db: the consumer and its
cursor, stitched delivery without a race, warehouse feeds that never lose a link,
and erasure."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventd import codec
from eventd.background import LoweredSpawn
from eventd.config import DestinationConfig, IdentityConfig
from eventd.event import Event
from eventd.identity import writer
from eventd.identity.feed import LinkFeed, WriteIdentities, writer_of
from eventd.identity.graph import ANONYMOUS, USER, profile_id_for
from eventd.identity.links import IdentityLink
from eventd.identity.service import IdentityService
from eventd.identity.stitch import Stitcher
from eventd.metrics import Metrics
from eventd.priority import BACKGROUND_NICE
from eventd.store import MemoryStore, SqliteStore, now_ms, service_cursor
from eventd.store.memory import MemoryData
from tests.harness import fill_disk


class Env:
    """A store, an identity service over it, and a way to append events."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = SqliteStore(tmp / "eventd.db", synchronous="normal")
        self.metrics = Metrics()
        self.service: IdentityService | None = None
        self.clock = 0

    async def start(
        self,
        warehouses: Mapping[str, WriteIdentities] | None = None,
        process: bool = True,
        **config: Any,
    ) -> IdentityService:
        self.metrics = Metrics()
        svc = IdentityService(
            IdentityConfig(**config),
            self.store,
            self.tmp / "identity.db",
            self.metrics,
            process=process,
        )
        svc.find_feeds = lambda: [
            LinkFeed(n, w, svc.store, svc.save_position) for n, w in (warehouses or {}).items()
        ]
        await svc.start()
        self.service = svc
        return svc

    async def send(self, type: str = "track", **fields: Any) -> int:
        """Store one event; returns its seq."""
        self.clock += 1
        msg = {
            "type": type,
            "messageId": str(uuid.uuid4()),
            "timestamp": f"2026-11-01T10:{self.clock // 60:02d}:{self.clock % 60:02d}.000Z",
            **fields,
        }
        row = (
            "app",
            msg["messageId"],
            type,
            fields.get("event"),
            fields.get("userId"),
            fields.get("anonymousId"),
            now_ms(),
            codec.dumps(msg),  # integers past 64 bits too, as ingest stores them
        )
        await self.store.append([row])
        return self.store.last_seq

    def refused(self) -> dict[str, float]:
        return {
            s.labels["reason"]: s.value
            for m in self.metrics.registry.collect()
            if m.name == "eventd_identity_links_refused"
            for s in m.samples
            if s.name.endswith("_total")
        }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    await e.store.open()
    yield e
    if e.service is not None:
        await e.service.stop()
    await e.store.close()


async def profile(svc: IdentityService, id: str, kind: str | None = None) -> dict[str, Any]:
    found = await svc.find(id, kind)
    assert found is not None, id
    return found.public()


async def test_the_graph_follows_the_log_and_resumes_after_a_restart(env: Env) -> None:
    await env.send(anonymousId="a1", event="Viewed Cars")
    svc = await env.start()
    await svc.drain()
    await env.send("identify", anonymousId="a1", userId="u1", traits={"make": "Volvo"})
    await svc.drain()
    assert (await profile(svc, "u1"))["event_count"] == 2
    await svc.stop()

    await env.send(anonymousId="a1", event="Chose Model")  # stored while it is stopped
    svc = await env.start()
    await svc.drain()
    p = await profile(svc, "a1")
    assert p["profile_id"] == profile_id_for(USER, "u1")
    assert (p["event_count"], p["traits"]) == (3, {"make": "Volvo"})  # nothing applied twice
    assert svc.cursor == env.store.last_seq
    assert await svc.find("a1", USER) is None
    assert await svc.find("u1", ANONYMOUS) is None


async def test_the_writer_process_runs_at_a_lower_cpu_priority(env: Env) -> None:
    """Background work: where the writer shares a core with eventd, ingest keeps it."""
    svc = await env.start()
    await env.send("identify", anonymousId="a1", userId="u1")
    await svc.drain()  # the graph works at that priority
    assert (await profile(svc, "a1"))["user_ids"] == ["u1"]
    pid = await svc.writer.call(os.getpid)
    assert pid != os.getpid()
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == max(ours, BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours  # eventd's own is left alone


def _report_priority(conn: Connection) -> None:
    """In a spawned child: wait for the parent's word, then send this process's nice."""
    conn.recv()
    conn.send(os.getpriority(os.PRIO_PROCESS, 0))


def test_the_writer_process_starts_up_at_the_lower_priority() -> None:
    """A spawned writer imports eventd again (~0.5 CPU-s) before its initializer lowers its
    priority: its parent lowers it as soon as it exists, so that start-up does not take
    eventd's core either. The child answers once start() has returned (no race)."""
    parent, child = Pipe()
    proc = LoweredSpawn().Process(target=_report_priority, args=(child,))
    proc.start()
    try:
        parent.send("go")
        assert parent.recv() == max(os.getpriority(os.PRIO_PROCESS, 0), BACKGROUND_NICE)
    finally:
        proc.join()
    assert proc.exitcode == 0


async def test_refusals_are_counted_by_reason(env: Env) -> None:
    svc = await env.start(max_anonymous_ids=1)
    await env.send("identify", anonymousId="laptop", userId="alice")
    await env.send("identify", anonymousId="laptop", userId="bob")
    await env.send("identify", anonymousId="phone", userId="bob")  # bob has the laptop: full
    await env.send("identify", anonymousId="NULL", userId="carol")
    await svc.drain()
    assert env.refused() == {
        "blocked_value": 1,
        "max_anonymous_ids": 1,
        "shared_anonymous_id": 1,
    }


def dest(**options: Any) -> DestinationConfig:
    return DestinationConfig(name="d", type="webhook", **options)


async def test_an_anonymous_event_after_the_identify_is_always_resolved(env: Env) -> None:
    """The stitcher waits for the graph: no race, whatever the graph's pace."""
    svc = await env.start()
    stitch = Stitcher(svc)
    before = await env.send(anonymousId="a1", event="Viewed Cars")
    await env.send("identify", anonymousId="a1", userId="u1", traits={"plan": "pro", "x": 1})
    after = await env.send(anonymousId="a1", event="Car Connected", context={"traits": {"x": 2}})
    other = await env.send(anonymousId="a2", event="Viewed Cars")
    # Handed over at once, as a worker would right after the commit.
    batch = [Event(s, "app", 0, body=b) for s, b in await stored(env, before, after, other)]
    out = await stitch(dest(resolve_identity=True, enrich_traits=("plan", "x")), batch)
    assert out is not None
    by_seq = {e.seq: e.message for e in out}
    assert "userId" not in by_seq[before]  # made before the link: stays anonymous
    # the profile's traits now (x: 2 came with a later event's context.traits)
    assert by_seq[before]["context"] == {"traits": {"plan": "pro", "x": 2}}
    assert by_seq[after]["userId"] == "u1"
    assert by_seq[after]["context"]["traits"] == {"plan": "pro", "x": 2}  # its own win
    assert by_seq[other] == batch[-1].message  # unknown: unchanged
    assert [e.user_id for e in out] == [None, "u1", None]
    # the stored events never change
    assert [orjson.loads(b) for _, b in await stored(env, before, after)] == [
        batch[0].message,
        batch[1].message,
    ]


async def test_traits_keep_integers_past_64_bits_exactly(env: Env) -> None:
    """The writer parses events with msgspec (exact integers), and profiles are stored
    through eventd.codec: a trait sent as 2**70 + 1 stays that integer in the profile
    and in what enrich_traits copies into a delivered event."""
    wide = 2**70 + 1
    svc = await env.start()
    await env.send("identify", anonymousId="a1", userId="u1", traits={"wide": wide, "n": 7})
    seq = await env.send(anonymousId="a1", event="Car Connected")
    await svc.drain()
    assert (await profile(svc, "u1"))["traits"] == {"wide": wide, "n": 7}
    batch = [Event(s, "app", 0, body=b) for s, b in await stored(env, seq)]
    out = await Stitcher(svc)(dest(enrich_traits=("wide",)), batch)
    assert out is not None
    traits = out[0].message["context"]["traits"]
    assert traits == {"wide": wide} and type(traits["wide"]) is int


async def stored(env: Env, *seqs: int) -> list[tuple[int, bytes]]:
    return [(e.seq, e.body) for e in await env.store.read_seqs(seqs)]


async def test_a_stitcher_leaves_its_batch_when_the_graph_stops(env: Env) -> None:
    svc = await env.start()
    seq = await env.send(anonymousId="a1")
    svc.cursor = 0  # as if it had not got there yet
    svc._stopping = True  # stopping: waiting would never end
    out = await Stitcher(svc)(dest(resolve_identity=True), [Event(seq, "app", 0, {"x": 1})])
    assert out is None
    svc._stopping = False


class Warehouse:
    """A warehouse-like destination: ``write_identities`` upserts on (anonymous_id,
    user_id) keeping the first linked_at, as the postgres/duckdb stores do; it fails
    while ``down``."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str | None, str], IdentityLink] = {}
        self.calls = 0
        self.down = 0
        self.stored = asyncio.Event()

    async def write_identities(self, links: Sequence[IdentityLink]) -> None:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise ConnectionError("warehouse unreachable")
        for link in links:
            old = self.rows.get((link.anonymous_id, link.user_id))
            linked_at = old.linked_at if old else link.linked_at
            self.rows[(link.anonymous_id, link.user_id)] = IdentityLink(
                link.anonymous_id, link.user_id, link.profile_id, linked_at
            )
        self.stored.set()

    def table(self) -> set[tuple[str | None, str, str]]:
        return {(k[0], k[1], v.profile_id) for k, v in self.rows.items()}


async def until(condition: Any, wake: asyncio.Event) -> None:
    while not condition():
        wake.clear()
        await asyncio.wait_for(wake.wait(), 30)


async def test_links_reach_the_warehouse_through_outages_merges_and_restarts(env: Env) -> None:
    wh = Warehouse()
    write = writer_of(wh)
    assert write is not None and writer_of(object()) is None
    wh.down = 2
    svc = await env.start({"wh": write})
    await env.send(anonymousId="a1", event="Viewed Cars")
    await env.send("identify", anonymousId="a1", userId="u1")
    await env.send("identify", anonymousId="a2", userId="u2")
    await svc.drain()
    p1, p2 = profile_id_for(USER, "u1"), profile_id_for(USER, "u2")
    expected = {(None, "u1", p1), ("a1", "u1", p1), (None, "u2", p2), ("a2", "u2", p2)}
    await until(lambda: wh.table() == expected, wh.stored)
    assert wh.calls >= 3  # two refused writes, then stored: retried, not skipped

    await env.send("alias", previousId="u2", userId="u1")  # u2's rows move to u1's profile
    await svc.drain()
    merged = {(a, u, p1) for a, u, _ in expected}
    await until(lambda: wh.table() == merged, wh.stored)
    await svc.stop()

    calls = wh.calls
    svc = await env.start({"wh": write})
    await env.send("identify", anonymousId="a3", userId="u2")
    await svc.drain()
    await until(lambda: ("a3", "u2", p1) in wh.table(), wh.stored)
    assert wh.calls == calls + 1  # its position survived: only the new link was sent
    assert wh.table() == merged | {("a3", "u2", p1)}


async def test_erase_deletes_the_profile_links_and_its_anonymous_events(env: Env) -> None:
    svc = await env.start()
    s1 = await env.send(anonymousId="laptop", event="Viewed Cars")  # alice's: before sign-in
    await env.send("identify", anonymousId="laptop", userId="alice")
    s3 = await env.send(anonymousId="laptop", event="Chose Make")  # alice's
    await env.send("identify", anonymousId="laptop", userId="bob")
    await env.send(anonymousId="laptop", event="Chose Model")  # bob's
    s6 = await env.send(anonymousId="phone", event="Viewed Cars")
    await env.send("identify", anonymousId="phone", userId="alice")
    assert await svc.erase("alice") == [s1, s3, s6]
    assert await svc.find("alice") is None
    assert await svc.find("phone") is None
    bob = await profile(svc, "laptop")
    assert bob["user_ids"] == ["bob"]
    assert await svc.store.read(svc.store.counts) == {"profiles": 1, "identifiers": 2, "links": 2}
    assert await svc.erase("alice") == []


async def test_a_page_that_cannot_be_written_is_retried_not_skipped(env: Env) -> None:
    svc = await env.start(process=False)  # the writer on a thread: its store can be patched
    await svc.drain()  # identity.db is open (start() does not wait for it)
    store = writer._store
    assert store is not None
    real = store.apply
    failures = []

    def full_disk(changes: Any, cursor: int) -> None:
        if not failures:
            failures.append(cursor)
            raise sqlite3.OperationalError("database or disk is full")
        real(changes, cursor)

    store.apply = full_disk  # type: ignore[method-assign]
    await env.send("identify", anonymousId="a1", userId="u1")
    await env.send(anonymousId="a1")
    await svc.drain()
    assert len(failures) == 1  # one refused page (seq 1 alone, or 1-2)
    assert (await profile(svc, "u1"))["event_count"] == 2  # the page applied once, whole


async def test_retention_passes_only_what_the_graph_has_applied(env: Env) -> None:
    """The graph's cursor (identity.db's) is copied to the store, where app.passed_seq
    sees it: events the graph has not applied are kept, even while it is stopped."""
    from types import SimpleNamespace as NS

    from eventd.app import passed_seq

    dispatcher = NS(passed_seq=lambda: env.store.last_seq)  # destinations passed it all
    svc = await env.start()
    first = await env.send("identify", anonymousId="a1", userId="u1")
    await svc.drain()
    assert await env.store.cursor(service_cursor("identity")) == first
    await svc.stop()
    env.service = None
    await env.send(anonymousId="a1")  # stored while the graph is stopped
    assert await passed_seq(dispatcher, env.store, [svc]) == first  # type: ignore[arg-type]

    svc = await env.start()
    await svc.drain()
    assert svc.cursor == env.store.last_seq
    assert await passed_seq(dispatcher, env.store, [svc]) == env.store.last_seq  # type: ignore[arg-type]


def test_a_commit_the_full_disk_refuses_raises_why_and_the_store_goes_on(tiny_disk: Path) -> None:
    """identity.db on a disk with no byte free: the page's COMMIT fails and SQLite may
    have rolled the transaction back already; the caller gets "database or disk is
    full" (not "no transaction is active" from a second ROLLBACK), nothing of the page
    is kept, and the same page commits once space is back."""
    from eventd.identity.graph import Graph
    from eventd.store.identity import IdentityStore

    store = IdentityStore(tiny_disk / "identity.db", "full")
    store.open_writer()
    graph = Graph(backing=store)
    n = 300  # ~100 KB of rows: written at COMMIT (under the page cache's 2 MB)
    ts = "2026-11-01T10:00:00.000Z"
    for seq in range(1, n + 1):
        msg = {"type": "identify", "userId": f"u{seq}", "anonymousId": f"a{seq}", "timestamp": ts}
        graph.apply(seq, {**msg, "traits": {"n": seq}})
    changes = graph.take_changes()
    fill_disk(tiny_disk / "filler")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.apply(changes, n)
    assert not store.w.in_transaction
    assert (store.cursor(), store.profile_of(USER, "u1")) == (0, None)

    (tiny_disk / "filler").unlink()
    store.apply(changes, n)
    assert store.cursor() == n
    assert store.profile_of(USER, f"u{n}") == profile_id_for(USER, f"u{n}")
    store.close()


async def test_the_graph_runs_over_the_memory_store_too(tmp_path: Path) -> None:
    """The memory store has no log another process can read and keeps the graph's state
    in its own memory: the service reads the pages itself and hands them to a writer
    thread, and a second service over the same data (a restart) resumes from its cursor."""
    data = MemoryData()
    store = MemoryStore(data)
    await store.open()

    async def send(seq: int, **fields: Any) -> None:
        msg = {"type": "track", "messageId": f"m{seq}", "timestamp": f"2026-11-01T10:00:0{seq}Z"}
        msg.update(fields)
        row = ("app", msg["messageId"], msg["type"], None, None, None, now_ms(), codec.dumps(msg))
        await store.append([row])

    def service() -> IdentityService:
        return IdentityService(IdentityConfig(), store, tmp_path / "unused.db", Metrics())

    await send(1, anonymousId="a1")
    svc = service()
    assert not svc.reads_log and svc.writer.process is False
    await svc.start()
    await send(2, type="identify", anonymousId="a1", userId="u1", traits={"n": 2**70})
    await svc.drain()
    await svc.stop()
    await send(3, anonymousId="a1")
    svc = service()
    await svc.start()
    await svc.drain()
    p = await profile(svc, "a1")
    assert (p["user_ids"], p["event_count"], p["traits"]) == (["u1"], 3, {"n": 2**70})
    found = await svc.find("u1")
    assert found is not None
    assert [e.seq for e in await svc.timeline(found, None, 10)] == [3, 2, 1]
    assert data.identity.cursor == 3
    await svc.stop()
    await store.close()
    assert not (tmp_path / "unused.db").exists()
