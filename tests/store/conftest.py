"""The Store conformance suite's backends: every test in this folder runs once per
backend named in ``BACKENDS``.

To run the suite against a new store (the NATS JetStream one, say):

1. write a fixture named ``<name>_backend`` here (it may use session fixtures, e.g. a
   running nats-server cluster) returning an object with the :class:`Backend` shape;
2. add ``<name>`` to ``BACKENDS``;
3. ``.venv/bin/python -m pytest tests/store -q -k <name>``.

A backend's ``store(**options)`` returns a new, unopened store over the same
place every time it is called: calling it again after closing (or abandoning)
the first is a restart. ``append_then_crash`` appends batches until the process
holding the store dies without closing it (SIGKILL for a real backend) and
returns the messageIds whose append had returned.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest

from eventd.config import JetStreamConfig, StorageConfig
from eventd.store import EventRow, MemoryStore, SqliteStore, Store
from eventd.store.cluster import ClusterStore
from eventd.store.cluster_admin import EVENT_BITS
from eventd.store.memory import MemoryData
from tests.nats_cluster import NatsCluster

BACKENDS = ["sqlite", "memory", "jetstream"]
ROOT = Path(__file__).resolve().parents[2]

# What the cluster store does differently, by design (docs/scaling.md, "Serve on the
# cluster"); each of these is covered for the cluster elsewhere, as named.
JETSTREAM_SKIPS = {
    "test_an_acknowledged_append_survives_a_crash": "kill -9 of a node: "
    "tests/test_jetstream_store.py and tests/test_cluster_serve.py",
    "test_after_a_crash_every_acknowledged_event_is_still_a_repeat": "the dedup set "
    "rebuilt after a node's loss: tests/test_jetstream_store.py",
    "test_subscribers_are_woken_by_new_events_only": "no local commit to signal: "
    "feeds long-poll their consumers",
    "test_appends_are_refused_whole_at_max_size": "no storage.max_size on the cluster "
    "(the servers' own limits apply)",
    "test_cursors_survive_a_restart": "service cursors do not run on the cluster "
    "(a destination's cursor is its consumer: tests/test_jetstream_store.py)",
    "test_events_are_read_back_by_seq": "an erasure publishes a group's other events "
    "again, under new seqs: tests/test_cluster_admin.py",
    "test_erasure_deletes_events_below_a_seq_and_dead_letters": "an erasure publishes "
    "a group's other events again at the log's end: tests/test_cluster_admin.py",
    "test_erasure_deletes_the_seqs_a_feature_found_too": "as above",
    "test_retention_deletes_in_batches_within_the_bounds": "the cluster sweep purges "
    "whole log messages below every destination consumer's ack floor: "
    "tests/test_jetstream_store.py; dead letters' retention: tests/test_cluster_admin.py",
}


class Backend(Protocol):
    def store(self, **options: Any) -> Store: ...

    async def append_then_crash(self) -> set[str]: ...


class SqliteBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self, **options: Any) -> Store:
        return SqliteStore(self.path, **options)

    async def append_then_crash(self) -> set[str]:
        """A real process appending with synchronous=full, killed with SIGKILL after
        it has acknowledged at least 400 events, while it is still appending."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.store.crash_writer",
            str(self.path),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        acked: set[str] = set()
        try:
            assert proc.stdout is not None
            while len(acked) < 400:
                line = await proc.stdout.readline()
                assert line, "the writer died before the kill"
                if line.startswith(b"ack "):  # other lines are its log
                    acked.add(line[4:].decode().strip())
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        return acked


class MemoryBackend:
    """In memory, a "crash" is a store dropped without close(); a restart a new store
    over the same :class:`MemoryData`."""

    def __init__(self) -> None:
        self.data = MemoryData()

    def store(self, **options: Any) -> Store:
        return MemoryStore(self.data, **options)

    async def append_then_crash(self) -> set[str]:
        store = self.store()
        await store.open()
        acked: set[str] = set()
        for batch in range(4):
            rows: list[EventRow] = []
            for i in range(100):
                mid = f"b{batch}-{i}"
                body = orjson.dumps({"type": "track", "messageId": mid})
                rows.append(("web", mid, "track", "E", "u", None, 1, body))
            await store.append(rows)
            acked.update(r[1] for r in rows)
        return acked  # never closed


_streams = itertools.count(1)
FORWARD_TIMEOUT = 30.0  # seconds an append waits for the dedup stage in the suite


class SettledClusterStore(ClusterStore):
    """The cluster store as the suite reads it: ``append`` also waits until this
    node's dedup stages (the only node: it holds every partition) have forwarded the
    events to the log, and returns how many they stored (on the cluster ``append``
    returns at the ingest stream's acknowledgement, and the log follows within
    milliseconds); ``last_seq`` is then the log's newest event, as on a node that
    has fetched everything."""

    async def append(self, rows: Sequence[EventRow]) -> int:
        js = self.js
        before = js.forwarded + js.duplicates
        stored = js.forwarded
        await super().append(rows)
        deadline = time.monotonic() + FORWARD_TIMEOUT
        while js.forwarded + js.duplicates < before + len(rows):
            assert time.monotonic() < deadline, "the dedup stage did not forward in time"
            await asyncio.sleep(0.005)  # polled: the stage has no completion signal
        _, last = await self._log_bounds()
        if last:
            newest = await self.js.js.get_msg(js.names.stream, seq=last)
            if newest.data:
                self.seen(last << EVENT_BITS | (len(orjson.loads(newest.data)) - 1))
        return js.forwarded - stored


class JetStreamBackend:
    """A stream of its own on the module's 3-server cluster; one partition, so the
    log keeps the order of appends (with several, partitions are forwarded
    independently and only each user's order is kept)."""

    def __init__(self, cluster: NatsCluster, path: Path) -> None:
        self.cfg = JetStreamConfig(
            servers=tuple(cluster.urls), stream=f"C{next(_streams)}", partitions=1
        )
        self.path = path

    def store(self, **options: Any) -> Store:
        storage = StorageConfig(
            backend="jetstream",
            jetstream=self.cfg,
            path=self.path,
            dedup_window=options.get("dedup_window", StorageConfig.dedup_window),
        )
        return SettledClusterStore(storage)

    async def append_then_crash(self) -> set[str]:
        raise NotImplementedError(JETSTREAM_SKIPS["test_an_acknowledged_append_survives_a_crash"])


@pytest.fixture
def jetstream_backend(request: pytest.FixtureRequest, tmp_path: Path) -> JetStreamBackend:
    reason = JETSTREAM_SKIPS.get(request.node.originalname)
    if reason is not None:
        pytest.skip(f"cluster: {reason}")
    cluster: NatsCluster = request.getfixturevalue("nats_cluster")
    return JetStreamBackend(cluster, tmp_path / "node" / "eventd.db")


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> SqliteBackend:
    return SqliteBackend(tmp_path / "eventd.db")


@pytest.fixture
def memory_backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store of the backend, closed after the test."""
    s = backend.store(dedup_window=3600.0)
    await s.open()
    yield s
    await s.close()
