"""``python -m bench.duckdb_load``: DuckDB's own part of the duckdb destination's load,
per event, under variants of its settings and tables.

The destination's fast path (``plugins/duckdb/vectorized.py``) makes ``--batches``
batches of 5,000 of bench.reports' SDK-shaped tracks into Arrow tables once; then each
variant loads those same tables into a fresh copy of one file (tables made by the
destination itself), one transaction a batch as the loader runs them (``BEGIN``, the
plain inserts, ``COMMIT``), and a final ``CHECKPOINT`` (so a variant that checkpoints
less pays what it put off). Variants run in turn, ``--rounds`` times, so each round's
figures are same-moment figures. Printed per event: CPU-seconds of this process
(DuckDB's threads included; no Python but the calls), of which COMMIT and the final
CHECKPOINT, and wall time. On a shared machine compare CPU within a round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson

from bench.reports import message
from plugins.duckdb import loader as loader_module
from plugins.duckdb.loader import Loader, skipping_loaded
from plugins.duckdb.vectorized import Load

BATCH = 5000
EVENT_TABLES = ["viewed_car", "booked_test_drive", "started_checkout", "order_completed"]
# tracks again, without its primary key on id (what skips loaded messageIds)
NO_KEY = [
    "CREATE TABLE app.tracks_nokey AS SELECT * FROM app.tracks WITH NO DATA",
    "DROP TABLE app.tracks",
    "ALTER TABLE app.tracks_nokey RENAME TO tracks",
]


@dataclass
class Variant:
    """Settings (``SET ...``) and statements run on the copy before loading; ``script``
    sends each batch as one multi-statement string instead of one call a statement;
    ``literal`` gives the load time as a literal, not a ``$1`` parameter; ``extra``
    statements run in each batch's transaction after its inserts."""

    settings: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    script: bool = False
    literal: bool = False
    extra: list[str] = field(default_factory=list)
    row_group_size: int | None = None  # the file attached with this ROW_GROUP_SIZE
    tracks_only: bool = False  # only tracks' insert: what the event tables' rows cost


VARIANTS = {
    "default-16MiB": Variant(["SET checkpoint_threshold = '16MiB'"]),  # DuckDB's default
    "loader": Variant(),  # the loader's own settings
    "checkpoint-256MiB": Variant(["SET checkpoint_threshold = '256MiB'"]),
    "no-key-on-tracks": Variant(setup=NO_KEY),
    # what a key on a 64-bit hash of the id in a table of its own would cost instead
    "hash-key-table": Variant(
        setup=[*NO_KEY, "CREATE TABLE app.loaded_ids (h UBIGINT PRIMARY KEY)"],
        extra=["INSERT INTO app.loaded_ids SELECT hash(id) FROM eventd_tracks"],
    ),
    # the same with a hash DuckDB documents as stable (MD5): 128 bits, or its low 64
    "md5-key-table": Variant(
        setup=[*NO_KEY, "CREATE TABLE app._eventd_loaded (h UHUGEINT PRIMARY KEY)"],
        extra=["INSERT INTO app._eventd_loaded SELECT md5_number(id) FROM eventd_tracks"],
    ),
    "md5-lower-key-table": Variant(
        setup=[*NO_KEY, "CREATE TABLE app._eventd_loaded (h UBIGINT PRIMARY KEY)"],
        extra=["INSERT INTO app._eventd_loaded SELECT md5_number_lower(id) FROM eventd_tracks"],
    ),
    # DuckDB writes an append that fills a row group to the file itself at COMMIT
    # (optimistic writes), not row by row to the WAL: row groups of 4,096 rows
    "row-groups-4096": Variant(row_group_size=4096),
    "tracks-only": Variant(tracks_only=True),
    # the batch's event rows in one table (one insert) instead of one table per event
    "one-event-table": Variant(
        tracks_only=True,
        setup=[
            "CREATE TABLE app.wide AS SELECT * FROM ("
            + " UNION ALL BY NAME ".join(f"SELECT * FROM app.{t}" for t in EVENT_TABLES)
            + ") WITH NO DATA"
        ],
        extra=[
            "INSERT INTO app.wide BY NAME SELECT *, now() AS uuid_ts FROM ("
            + " UNION ALL BY NAME ".join(f"SELECT * FROM eventd_event_{i}" for i in range(4))
            + ")"
        ],
    ),
    "one-script": Variant(script=True, literal=True),
    "literal": Variant(literal=True),
    "fsync-none": Variant(["SET fsync_mode = 'NONE'"]),
}


def batches(directory: Path, count: int) -> tuple[Path, list[Load]]:
    """A file whose tables the destination made, and ``count`` batches' Arrow tables."""
    bodies = [orjson.dumps(message(i)) for i in range(BATCH * (count + 1))]
    first = [("app", b) for b in bodies[:BATCH]]
    made = Loader(str(directory / "template.duckdb"), None)
    made.deliver(first)  # the Python path makes the tables
    made.deliver(first)  # loaded again (skipped): the fast path learns the shapes
    columns = {table: cols for (_, table), cols in made.columns.items()}
    shapes = made.shapes["app"]
    loads = [
        shapes.load(bodies[k : k + BATCH], columns, "app", skipping_loaded)
        for k in range(BATCH, len(bodies), BATCH)
    ]
    made.close()
    return directory / "template.duckdb", loads


def run(template: Path, loads: list[Load], variant: Variant) -> dict[str, float]:
    """One variant's load of ``loads`` into a copy of ``template``: microseconds per
    event of CPU (all, COMMIT, final CHECKPOINT) and wall."""
    path = template.with_name("run.duckdb")
    shutil.copy(template, path)
    config: dict[str, str | bool | int | float | list[str]] = {
        "checkpoint_threshold": loader_module.CHECKPOINT_THRESHOLD
    }
    if variant.row_group_size is None:
        con = duckdb.connect(str(path), config=config)
    else:
        con = duckdb.connect(config=config)
        con.execute(f"ATTACH '{path}' AS run (ROW_GROUP_SIZE {variant.row_group_size})")
        con.execute("USE run")
    for sql in variant.settings + variant.setup:
        con.execute(sql)
    now = datetime.now(UTC)
    start, cpu, commit = time.perf_counter(), time.process_time(), 0.0
    for load in loads:
        for view, table in load.views.items():
            con.register(view, table)
        literal = f"CAST('{now.isoformat()}' AS TIMESTAMPTZ)"
        plains = [
            p.replace("CAST($1 AS TIMESTAMPTZ)", literal) if variant.literal else p
            for p, _ in load.inserts
            if not variant.tracks_only or "eventd_tracks" in p
        ]
        if variant.script:
            con.execute(f"BEGIN TRANSACTION; {';'.join(plains)}; COMMIT")
        else:
            con.execute("BEGIN TRANSACTION")
            for plain in plains:
                con.execute(plain, None if variant.literal else [now])
            for sql in variant.extra:
                con.execute(sql)
            at = time.process_time()
            con.execute("COMMIT")
            commit += time.process_time() - at
        for view in load.views:
            con.unregister(view)
    at = time.process_time()
    con.execute("CHECKPOINT")
    final = time.process_time() - at
    cpu, wall = time.process_time() - cpu, time.perf_counter() - start
    con.close()
    path.unlink()
    n = BATCH * len(loads) / 1e6
    return {"cpu": cpu / n, "commit": commit / n, "checkpoint": final / n, "wall": wall / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.duckdb_load", description=__doc__)
    p.add_argument("--batches", type=int, default=30, help="batches of 5,000 (default 30)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)} (default: all)")
    args = p.parse_args(argv)
    names = args.variants or list(VARIANTS)
    if unknown := set(names) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="eventd-bench-duckdb-") as tmp:
        template, loads = batches(Path(tmp), args.batches)
        for _ in range(args.rounds):
            for name in names:
                figures[name].append(run(template, loads, VARIANTS[name]))
    print(f"load average: {', '.join(f'{a:.2f}' for a in os.getloadavg())}")
    print(f"{args.batches} batches of {BATCH:,}; us per event, each round, then the median\n")
    print("| variant | CPU | of which COMMIT | final CHECKPOINT | wall |")
    print("|---|---|---|---|---|")
    for name, runs in figures.items():
        cells = [
            " ".join(f"{r[k]:.1f}" for r in runs)
            + f" ({statistics.median(r[k] for r in runs):.1f})"
            for k in ("cpu", "commit", "checkpoint", "wall")
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
