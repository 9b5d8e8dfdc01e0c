"""The 24 h dedup set's candidates, measured on this machine's disk.

Each candidate runs what a dedup stage does for a group of events: look the keys
up (multi-get), then store the new ones, with random UUID messageIds as the SDKs
send them (each key lands on a random page or block). Groups of ``--group`` keys,
``--keys`` in all, then a second pass of the same keys (every one a repeat: the
retry storm case). Reported per candidate: keys/s checked-and-added, keys/s
checked as repeats, bytes on disk, and the process's RSS growth.

``rocksdb``   eventd/store/dedup.py's DedupSet (rocksdict, TTL, bloom filter)
``sqlite``    a WITHOUT ROWID table (key BLOB PRIMARY KEY, received_at), WAL,
              synchronous=NORMAL, one transaction per group
``memory``    a Python dict: the RAM a held-in-memory set costs (what JetStream's
              own message-id window does, on every replica)

Run: ``python -m bench.dedup DIR --keys 1000000 --group 500`` (each candidate in
this process, one after another); prints one JSON object per candidate.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from eventd.store.dedup import DedupSet, dedup_key

DAY_MS = 86_400_000
Group = list[tuple[bytes, int]]
Check = Callable[[Group], int]  # checks and stores a group; returns how many were new


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _groups(keys: list[bytes], group: int, at: int) -> Iterator[Group]:
    for i in range(0, len(keys), group):
        yield [(k, at) for k in keys[i : i + group]]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rocksdb(path: Path) -> tuple[Check, Callable[[], None]]:
    s = DedupSet(path, DAY_MS)

    def check(items: Group) -> int:
        new = s.filter_new(items)
        s.add([items[i] for i in new])
        return len(new)

    return check, s.close


def sqlite(path: Path) -> tuple[Check, Callable[[], None]]:
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "dedup.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID"
    )

    def check(items: Group) -> int:
        conn.execute("BEGIN")
        before = conn.total_changes
        # The window rule: a stored copy older than the window is replaced.
        conn.executemany(
            "INSERT INTO seen VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET at = excluded.at"
            " WHERE excluded.at - seen.at >= ?",
            [(k, at, DAY_MS) for k, at in items],
        )
        conn.execute("COMMIT")
        return conn.total_changes - before

    return check, conn.close


def memory(path: Path) -> tuple[Check, Callable[[], None]]:
    seen: dict[bytes, int] = {}

    def check(items: Group) -> int:
        new = 0
        for k, at in items:
            old = seen.get(k)
            if old is None or at - old >= DAY_MS:
                seen[k] = at
                new += 1
        return new

    return check, seen.clear


CANDIDATES = {"rocksdb": rocksdb, "sqlite": sqlite, "memory": memory}


def measure(name: str, path: Path, keys: list[bytes], group: int) -> dict[str, object]:
    rss0 = _rss_bytes()
    check, close = CANDIDATES[name](path)
    at = int(time.time() * 1000)
    started = time.perf_counter()
    new = sum(check(g) for g in _groups(keys, group, at))
    first = time.perf_counter() - started
    rss = _rss_bytes() - rss0
    started = time.perf_counter()
    repeats = sum(check(g) for g in _groups(keys, group, at + 1))
    second = time.perf_counter() - started
    close()
    if new != len(keys) or repeats != 0:
        raise SystemExit(f"{name}: {new} new of {len(keys)}, {repeats} repeats taken as new")
    return {
        "candidate": name,
        "keys": len(keys),
        "group": group,
        "new_keys_per_s": round(len(keys) / first),
        "repeat_keys_per_s": round(len(keys) / second),
        "disk_bytes": _dir_bytes(path) if path.exists() else 0,
        "rss_growth_bytes": rss,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dedup", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--group", type=int, default=500)
    p.add_argument("--only", default=",".join(CANDIDATES))
    args = p.parse_args(argv)
    keys = [dedup_key("web", str(uuid.uuid4())) for _ in range(args.keys)]
    for name in args.only.split(","):
        print(orjson.dumps(measure(name, args.dir / name, keys, args.group)).decode(), flush=True)


if __name__ == "__main__":
    main()
