"""A process that appends to a SQLite store and prints each messageId once its
append has returned (acknowledged), until it is killed: the crash half of the
conformance suite's durability test. ``python -m tests.store.crash_writer PATH``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from eventd.store import EventRow, SqliteStore, now_ms


def rows(batch: int, size: int) -> list[EventRow]:
    out: list[EventRow] = []
    for i in range(size):
        mid = f"b{batch}-{i}"
        body = orjson.dumps({"type": "track", "event": "E", "messageId": mid})
        out.append(("web", mid, "track", "E", "u", None, now_ms(), body))
    return out


async def main(path: Path) -> None:
    store = SqliteStore(path, synchronous="full")
    await store.open()
    batch = 0
    while True:  # until killed
        # Four appends in flight at once, so the kill lands among group commits.
        batches = [rows(batch * 4 + k, 25) for k in range(4)]
        await asyncio.gather(*(store.append(b) for b in batches))
        sys.stdout.write("".join(f"ack {r[1]}\n" for b in batches for r in b))
        sys.stdout.flush()
        batch += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
