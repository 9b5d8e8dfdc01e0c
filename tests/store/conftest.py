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
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest

from eventd.store import EventRow, MemoryStore, SqliteStore, Store
from eventd.store.memory import MemoryData

BACKENDS = ["sqlite", "memory"]
ROOT = Path(__file__).resolve().parents[2]


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
