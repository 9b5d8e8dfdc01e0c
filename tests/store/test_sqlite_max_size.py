"""``storage.max_size`` counts everything the SQLite store keeps on disk: the outbox's
live pages and WAL, and the dedup set's RocksDB directory beside it (which holds a
key per event of the last 24 h and, before this, grew outside the limit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from eventd.store import StorageUnavailable
from eventd.store.sqlite import SqliteStore, dedup_path

T0 = 1_700_000_000_000


def sqlite_bytes(path: Path) -> int:
    """Live pages plus WAL, read by a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        page_size, pages, free = (
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "page_count", "freelist_count")
        )
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return int((pages - free) * page_size + (wal.stat().st_size if wal.exists() else 0))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def rows(prefix: str, n: int) -> list[tuple[str, str, str, str, str, None, int, bytes]]:
    return [("web", f"{prefix}{i}", "track", "E", "u", None, T0, b"{}") for i in range(n)]


async def test_the_dedup_set_counts_toward_max_size_and_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "eventd.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.append(rows("a", 10))
        dedup = directory_bytes(dedup_path(path))
        assert dedup > 0
        on_disk = sum(
            p.stat().st_size
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
            if p.exists()
        )
        assert store.file_bytes() == on_disk + dedup
        assert store.stats().size == on_disk + dedup

        # Room for the outbox alone, not for the outbox and its dedup set: refused.
        store.max_size = sqlite_bytes(path) + dedup // 2
        with pytest.raises(StorageUnavailable, match="max_size"):
            await store.append(rows("b", 1))
        assert len(await store.read(0, 100)) == 10  # nothing of the refused append

        store.max_size = sqlite_bytes(path) + dedup + 1_000_000
        assert await store.append(rows("c", 1)) == 1
    finally:
        await store.close()
