"""``python -m bench.hotpath``: eventd's CPU per ingested event, stage by stage, in one
process (no HTTP, no load generator).

A profile of the server under load (py-spy) says which stages matter; this measures
each alone, as CPU time of this process, the minimum over ``--rounds`` (on a shared
machine the minimum is the figure least disturbed by the others). The events are the
bench's SDK-shaped track calls (:mod:`bench.events`) with random UUID messageIds.

Stages:

- ``parse``: a 100-event ``/v1/batch`` body read (:func:`eventd.ingest._parse_json`);
- ``rows``: its items normalized, checked and encoded into outbox rows
  (``Ingest._rows``, what a request does between parsing and its commit);
- ``store``: those rows appended to a real outbox (:class:`~eventd.store.sqlite.SqliteStore`,
  ``synchronous = full``), 16 requests' appends at once as the writer groups them
  under the bench's 16 connections: dedup lookup, insert, COMMIT, dedup add and the
  thread hop (the writer thread's CPU is this process's too);
- ``track``: parse and rows of one ``/v1/track`` body, per request.

Prints one JSON object: microseconds of CPU per event (``track``: per request).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from bench import events
from eventd.config import parse_config
from eventd.ingest import Ingest, _parse_json
from eventd.live import LiveHub
from eventd.metrics import Metrics
from eventd.normalize import Envelope
from eventd.store import EventRow
from eventd.store.sqlite import SqliteStore

BATCH_EVENTS = 100
CONNS = 16  # the bench's /v1/batch connections: one group commit holds this many appends


def _best(rounds: int, work: Callable[[], int]) -> float:
    """Least CPU microseconds per unit over ``rounds`` runs of ``work`` (returns units)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        units = work()
        best = min(best, (time.process_time() - start) * 1e6 / units)
    return best


def measure(requests: int, rounds: int, work_dir: Path) -> dict[str, float]:
    """The stages' CPU microseconds per event over ``requests`` batch bodies."""
    config = parse_config(
        {
            "sources": {events.SOURCE: {"write_key": events.WRITE_KEY}},
            "storage": {"path": str(work_dir / "eventd.db"), "synchronous": "full"},
        },
        "bench.hotpath",
    )
    source = config.sources[events.SOURCE]
    head, tail = events.batch_item()

    def new_bodies() -> list[bytes]:
        return [
            events.batch_body(head, tail, [str(uuid.uuid4()).encode() for _ in range(BATCH_EVENTS)])
            for _ in range(requests)
        ]

    bodies = new_bodies()
    track_head, track_tail = events.track_body()
    track_bodies = [
        track_head + str(uuid.uuid4()).encode() + track_tail for _ in range(requests * 10)
    ]
    metrics = Metrics()
    store = SqliteStore(config.storage.path, synchronous="full", metrics=metrics)
    ingest = Ingest(config, store, metrics, LiveHub())

    def rows_of(body: bytes) -> list[EventRow]:
        payload, lossless = _parse_json(body)
        env = Envelope(received_at=datetime.now(UTC), ip="127.0.0.1")
        rows, _ = ingest._rows(source, payload["batch"], None, env, check_size=True, scrub=lossless)
        return rows

    def parse() -> int:
        for body in bodies:
            _parse_json(body)
        return len(bodies) * BATCH_EVENTS

    payloads = [_parse_json(body) for body in bodies]

    def rows() -> int:
        for payload, lossless in payloads:
            env = Envelope(received_at=datetime.now(UTC), ip="127.0.0.1")
            ingest._rows(source, payload["batch"], None, env, check_size=True, scrub=lossless)
        return len(payloads) * BATCH_EVENTS

    def track() -> int:
        for body in track_bodies:
            payload, lossless = _parse_json(body)
            env = Envelope(received_at=datetime.now(UTC), ip="127.0.0.1")
            ingest._rows(source, [payload], "track", env, scrub=lossless)
        return len(track_bodies)

    result = {"parse": _best(rounds, parse), "rows": _best(rounds, rows)}
    result["track"] = _best(rounds, track)

    async def store_all() -> float:
        await store.open()
        try:
            best = float("inf")
            for _ in range(rounds):
                # new messageIds each round: a repeat would only measure the dedup
                fresh = [rows_of(body) for body in new_bodies()]
                start = time.process_time()
                for i in range(0, len(fresh), CONNS):
                    await asyncio.gather(*(store.append(r) for r in fresh[i : i + CONNS]))
                spent = time.process_time() - start
                best = min(best, spent * 1e6 / sum(len(r) for r in fresh))
            return best
        finally:
            await store.close()

    result["store"] = asyncio.run(store_all())
    result["total_batch"] = result["parse"] + result["rows"] + result["store"]
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100, help="100-event batch bodies per round")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    # the store logs its migrations at info: not part of the figures
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="eventd-hotpath-") as tmp:
        result: dict[str, Any] = measure(args.requests, args.rounds, Path(tmp))
    sys.stdout.write(orjson.dumps({k: round(v, 2) for k, v in result.items()}).decode() + "\n")


if __name__ == "__main__":
    main()
