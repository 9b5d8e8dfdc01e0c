"""``python -m bench.duckdb_load``: DuckDB's own part of the duckdb destination's load,
per event, under variants of its settings and tables: the floor of the load on this
machine (what is left when Python's part costs nothing).

The destination's fast path (``plugins/duckdb/vectorized.py``) makes ``--events`` of
bench.reports' SDK-shaped tracks into Arrow tables once, before any clock starts, in
batches of 5,000 (or a variant's size); then each variant loads those same tables into
a fresh copy of one file (tables made by the destination itself), one transaction a
batch as the loader runs them (``BEGIN``, the plain inserts, ``COMMIT``), and a final
``CHECKPOINT`` (so a variant that checkpoints less pays what it put off). Variants run
in turn, ``--rounds`` times, so each round's figures are same-moment figures; ``a+b``
names a variant made of two (settings and statements of both). Printed per event:
CPU-seconds of this process (DuckDB's threads included; no Python but the calls), of
which COMMIT and the final CHECKPOINT, wall time, and events per wall second and per
CPU-second, with the load average before and after. On a shared machine compare CPU
within a round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from bench.reports import message
from plugins.duckdb import loader as loader_module
from plugins.duckdb.loader import Loader, skipping_loaded
from plugins.duckdb.vectorized import Load, Shapes
from plugins.warehouse.rows import qualified

BATCH = 5000
EVENT_TABLES = ["viewed_car", "booked_test_drive", "started_checkout", "order_completed"]
# tracks again, without its primary key on id (what skips loaded messageIds)
NO_KEY = [
    "CREATE TABLE app.tracks_nokey AS SELECT * FROM app.tracks WITH NO DATA",
    "DROP TABLE app.tracks",
    "ALTER TABLE app.tracks_nokey RENAME TO tracks",
]
TRACKS = qualified("app", "tracks")


@dataclass
class Variant:
    """Settings (``SET ...``) and statements run on the copy before loading; ``script``
    sends each batch as one multi-statement string instead of one call a statement;
    ``literal`` gives the load time as a literal, not a ``$1`` parameter; ``extra``
    statements run in each batch's transaction after its inserts; ``batch``: events a
    transaction; ``anti_join``: tracks' insert skips the ids it holds by a NOT EXISTS
    (with ``NO_KEY``: no key, each batch still stored once); ``append``: each table by
    ``from_arrow(table).insert_into(target)``, what ``con.append`` does for a
    DataFrame (which this DuckDB takes only from pandas), instead of INSERT ... SELECT."""

    settings: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    script: bool = False
    literal: bool = False
    extra: list[str] = field(default_factory=list)
    row_group_size: int | None = None  # the file attached with this ROW_GROUP_SIZE
    tracks_only: bool = False  # only tracks' insert: what the event tables' rows cost
    batch: int = BATCH
    anti_join: bool = False
    append: bool = False

    def __add__(self, other: Variant) -> Variant:
        """Both variants' settings and statements; of scalars, the one not the default."""
        merged: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, list):
                merged[f.name] = [*mine, *[x for x in theirs if x not in mine]]
            else:
                default = getattr(Variant(), f.name)
                merged[f.name] = theirs if theirs != default else mine
        return replace(self, **merged)


VARIANTS = {
    "default-16MiB": Variant(["SET checkpoint_threshold = '16MiB'"]),  # DuckDB's default
    "loader": Variant(),  # the loader's own settings
    "checkpoint-256MiB": Variant(["SET checkpoint_threshold = '256MiB'"]),
    "checkpoint-1GiB": Variant(["SET checkpoint_threshold = '1GiB'"]),
    # DuckDB's wal_autocheckpoint is checkpoint_threshold under another name (one setting)
    "wal-autocheckpoint-256MiB": Variant(["SET wal_autocheckpoint = '256MiB'"]),
    "preserve-order-off": Variant(["SET preserve_insertion_order = false"]),
    "threads-1": Variant(["SET threads = 1"]),  # the loader's since session 8
    "threads-2": Variant(["SET threads = 2"]),  # one a core, DuckDB's default here
    "batch-20000": Variant(batch=20_000),
    "batch-50000": Variant(batch=50_000),
    "no-key-on-tracks": Variant(setup=NO_KEY),
    # no key, a batch's ids anti-joined against tracks' at insert (exact, scans the ids)
    "no-key-anti-join": Variant(setup=NO_KEY, anti_join=True),
    "append": Variant(append=True),
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
# What the brief asked of the floor, in one run: ``python -m bench.duckdb_load floor``
FLOOR = [
    "loader",
    "preserve-order-off",
    "threads-1",
    "threads-2",
    "batch-20000",
    "batch-50000",
    "no-key-on-tracks",
    "no-key-anti-join",
    "append",
    "default-16MiB",
    "checkpoint-256MiB",
    "checkpoint-1GiB",
]


def variant(name: str) -> Variant:
    """A variant by name; ``a+b`` is ``a`` and ``b`` together."""
    parts = [VARIANTS[part] for part in name.split("+")]
    made = parts[0]
    for part in parts[1:]:
        made = made + part
    return made


class Batches:
    """A file whose tables the destination made, and the Arrow tables of ``events``
    tracks in batches of a given size (each size built once, before any timing)."""

    def __init__(self, directory: Path, events: int):
        self.bodies = [orjson.dumps(message(i)) for i in range(BATCH + events)]
        first = [("app", b) for b in self.bodies[:BATCH]]
        self.template = directory / "template.duckdb"
        made = Loader(str(self.template), None)
        made.deliver(first)  # the Python path makes the tables
        made.deliver(first)  # loaded again (skipped): the fast path learns the shapes
        self.columns = {table: cols for (_, table), cols in made.columns.items()}
        self.shapes: Shapes = made.shapes["app"]
        made.close()
        self._loads: dict[int, list[Load]] = {}

    def loads(self, size: int) -> list[Load]:
        if size not in self._loads:
            self._loads[size] = [
                self.shapes.load(self.bodies[k : k + size], self.columns, "app", skipping_loaded)
                for k in range(BATCH, len(self.bodies), size)
            ]
        return self._loads[size]


def _anti_join(plain: str) -> str:
    """tracks' plain insert made to skip the ids tracks holds (no key needed)."""
    return (
        f"{plain} AS eventd_batch WHERE NOT EXISTS"
        f" (SELECT 1 FROM {TRACKS} AS eventd_loaded WHERE eventd_loaded.id = eventd_batch.id)"
    )


def _target(insert: str) -> str:
    """The table (``schema.table``, unquoted) an ``INSERT INTO "s"."t" (...`` writes."""
    return insert.split(" ", 3)[2].replace('"', "")


def _appendable(con: duckdb.DuckDBPyConnection, loads: list[Load], now: datetime) -> list[Load]:
    """``loads`` with each table's columns those of the table it goes into, in its order
    and types (the load time as ``uuid_ts``, nulls for columns the batch lacks): what
    ``con.append`` (a DataFrame's) and a relation's ``insert_into`` need. Built before
    the clock starts."""
    schemas: dict[str, pa.Schema] = {}
    out = []
    for load in loads:
        views = {}
        for plain, _ in load.inserts:
            view, target = plain.rsplit(" ", 1)[1], _target(plain)
            if target not in schemas:
                schemas[target] = con.sql(f"SELECT * FROM {target} LIMIT 0").to_arrow_table().schema
            table, schema = load.views[view], schemas[target]
            views[view] = pa.table(
                [
                    pa.array([now] * table.num_rows, f.type)
                    if f.name == "uuid_ts"
                    else table[f.name].cast(f.type)
                    if f.name in table.column_names
                    else pa.nulls(table.num_rows, f.type)
                    for f in schema
                ],
                schema=schema,
            )
        out.append(replace(load, views=views))
    return out


def run(template: Path, loads: list[Load], variant: Variant) -> dict[str, float]:
    """One variant's load of ``loads`` into a copy of ``template``: microseconds per
    event of CPU (all, COMMIT, final CHECKPOINT) and wall."""
    path = template.with_name("run.duckdb")
    shutil.copy(template, path)
    config: dict[str, str | bool | int | float | list[str]] = {  # the loader's
        "checkpoint_threshold": loader_module.CHECKPOINT_THRESHOLD,
        "threads": loader_module.LOAD_THREADS,
    }
    if variant.row_group_size is None:
        con = duckdb.connect(str(path), config=config)
    else:
        con = duckdb.connect(config=config)
        con.execute(f"ATTACH '{path}' AS run (ROW_GROUP_SIZE {variant.row_group_size})")
        con.execute("USE run")
    for sql in variant.settings + variant.setup:
        con.execute(sql)
    before = con.execute(f"SELECT count(*) FROM {TRACKS}").fetchall()[0]
    now = datetime.now(UTC)
    literal = f"CAST('{now.isoformat()}' AS TIMESTAMPTZ)"
    if variant.append:
        loads = _appendable(con, loads, now)
    start, cpu, commit = time.perf_counter(), time.process_time(), 0.0
    for load in loads:
        for view, table in load.views.items():
            con.register(view, table)
        plains = [
            p.replace("CAST($1 AS TIMESTAMPTZ)", literal) if variant.literal else p
            for p, _ in load.inserts
            if not variant.tracks_only or "eventd_tracks" in p
        ]
        if variant.anti_join:
            plains = [_anti_join(p) if "FROM eventd_tracks" in p else p for p in plains]
        if variant.script:
            con.execute(f"BEGIN TRANSACTION; {';'.join(plains)}; COMMIT")
        else:
            con.execute("BEGIN TRANSACTION")
            if variant.append:
                for plain in plains:
                    view = plain.rsplit(" ", 1)[1]
                    con.from_arrow(load.views[view]).insert_into(_target(plain))
            else:
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
    rows = con.execute(f"SELECT count(*) FROM {TRACKS}").fetchall()[0]
    con.close()
    path.unlink()
    events = sum(load.views["eventd_tracks"].num_rows for load in loads)
    assert rows and before and rows[0] - before[0] == events, (rows, before, events)
    n = events / 1e6
    return {"cpu": cpu / n, "commit": commit / n, "checkpoint": final / n, "wall": wall / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.duckdb_load", description=__doc__)
    p.add_argument(
        "--events", type=int, default=200_000, help="events loaded by each variant (200,000)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "variants",
        nargs="*",
        help=f"of {', '.join(VARIANTS)}, 'a+b' for both, or 'floor' for {', '.join(FLOOR)}"
        " (default: all)",
    )
    args = p.parse_args(argv)
    names = [
        n
        for name in args.variants or list(VARIANTS)
        for n in (FLOOR if name == "floor" else [name])
    ]
    if unknown := {part for n in names for part in n.split("+")} - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eventd-bench-duckdb-") as tmp:
        made = Batches(Path(tmp), args.events)
        for name in names:  # every batch size's Arrow tables built before any timing
            made.loads(variant(name).batch)
        for _ in range(args.rounds):
            for name in names:
                v = variant(name)
                figures[name].append(run(made.template, made.loads(v.batch), v))
    print(f"cores: {os.cpu_count()}; DuckDB {duckdb.__version__}")
    print(
        f"load average (1, 5, 15 min) before: {_avg(load_before)}, after: {_avg(os.getloadavg())}"
    )
    print(f"{args.events:,} events a variant; us per event, each round, then (the median)\n")
    print(
        "| variant | CPU | of which COMMIT | final CHECKPOINT | wall |"
        " events/s (wall) | events per CPU-s |"
    )
    print("|---|---|---|---|---|---:|---:|")
    for name, runs in figures.items():
        cells = [
            " ".join(f"{r[k]:.1f}" for r in runs)
            + f" ({statistics.median(r[k] for r in runs):.1f})"
            for k in ("cpu", "commit", "checkpoint", "wall")
        ]
        rates = [f"{1e6 / statistics.median(r[k] for r in runs):,.0f}" for k in ("wall", "cpu")]
        print(f"| {name} | {' | '.join(cells)} | {' | '.join(rates)} |")
    return 0


def _avg(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{a:.2f}" for a in avg)


if __name__ == "__main__":
    sys.exit(main())
