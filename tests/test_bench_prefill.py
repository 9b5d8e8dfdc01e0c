"""bench's prefilled stores: the identity graph there has nothing left to apply, so the
delivery and ingest rows measure delivery and ingest, not the graph catching up."""

from __future__ import annotations

from pathlib import Path

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
