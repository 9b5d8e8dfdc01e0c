"""bench's prefilled stores: the identity graph there has nothing left to apply, so the
delivery and ingest rows measure delivery and ingest, not the graph catching up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import prefill
from eventd.config import IdentityConfig
from eventd.identity.service import IdentityService
from eventd.metrics import Metrics
from eventd.store import SqliteStore


async def started_graph(db: Path) -> tuple[int, float, int]:
    """(the graph's cursor, the events it applied, the log's last seq) once it has opened."""
    store = SqliteStore(db, synchronous="normal")
    await store.open()
    metrics = Metrics()
    svc = IdentityService(IdentityConfig(), store, db.parent / "identity.db", metrics)
    try:
        await svc.start()
        await svc.drain()
        applied = metrics.registry.get_sample_value("eventd_identity_events_total")
        return svc.cursor, applied or 0.0, store.last_seq
    finally:
        await svc.stop()
        await store.close()


async def test_a_caught_up_template_and_its_copies_start_the_graph_at_the_log_end(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template" / "eventd.db"
    prefill.prefill(template, 300, prefix="pre", caught_up=["identity"])
    copy = tmp_path / "delivery" / "eventd.db"
    prefill.copy_with_cursors(template, copy, ["hook"])
    assert await started_graph(copy) == (300, 0, 300)


async def test_without_it_the_graph_applies_the_whole_log(tmp_path: Path) -> None:
    db = tmp_path / "eventd.db"
    prefill.prefill(db, 300, prefix="pre")
    assert await started_graph(db) == (300, 300, 300)


def test_a_cached_store_is_reused_while_young_and_filled_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prefill.cached(tmp_path, 200, uuids=True, caught_up=["identity"])
    ids = message_ids(first)
    assert len(ids) == 200
    again = prefill.cached(tmp_path, 200, uuids=True, caught_up=["identity"])
    assert (again, message_ids(again)) == (first, ids)  # the same events: not written again
    monkeypatch.setattr(prefill, "CACHE_MAX_AGE_MS", -1)  # every store is too old now
    refilled = prefill.cached(tmp_path, 200, uuids=True, caught_up=["identity"])
    assert refilled == first and len(message_ids(refilled) - ids) == 200  # new random UUIDs


def test_a_cached_store_left_unfinished_is_filled_again(tmp_path: Path) -> None:
    path = prefill.cached(tmp_path, 100, uuids=True)
    ids = message_ids(path)
    (path.parent / "complete").unlink()  # as if the prefill had been killed halfway
    assert len(message_ids(prefill.cached(tmp_path, 100, uuids=True)) - ids) == 100


def message_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {m for (m,) in conn.execute("SELECT message_id FROM events")}
    finally:
        conn.close()
