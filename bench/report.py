"""Statistics over rounds, the table, and the targets of issue 6.

Each round yields one ``{metric: value}`` dict; ratios are taken within a round
(eventd against the ceiling measured minutes apart on the same machine), then
summarised as median, min and max over the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

Round = dict[str, float]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    digits: int = 0


ROWS: tuple[Row, ...] = (
    Row("ceiling_a_rps", "ceiling A: bare aiohttp, same POST, fixed 200", "req/s"),
    Row("ceiling_a_p50", "ceiling A latency p50", "ms", 2),
    Row("ceiling_a_p99", "ceiling A latency p99", "ms", 2),
    Row("ceiling_a_cpu", "ceiling A per CPU-second of its server (wrk only)", "req/CPU-s"),
    Row("ceiling_b_outbox", "ceiling B: raw SQLite inserts + RocksDB dedup set", "rows/s"),
    Row("ceiling_b_outbox_uuid", "ceiling B, random UUID messageIds (as SDKs send)", "rows/s"),
    Row("ceiling_b_index_uuid", "ceiling B, UUIDs, the old dedup index + trigger", "rows/s"),
    Row("ceiling_b_plain", "ceiling B': raw SQLite inserts, no dedup at all", "rows/s"),
    Row("ceiling_b_batched", "ceiling B'': record-batch rows of 100 + dedup table", "events/s"),
    Row("ceiling_b_outbox_uuid_cpu", "ceiling B, UUIDs, per CPU-second", "rows/CPU-s"),
    Row("ceiling_b_batch_rocks", "ceiling B3: record-batch rows of 100 + RocksDB set", "events/s"),
    Row("ceiling_b_batch_rocks_cpu", "  the same, per CPU-second", "events/CPU-s"),
    Row(
        "ceiling_b_batch_rocks_bodies_cpu",
        "  the same, bodies only (the layout's bound), per CPU-second",
        "events/CPU-s",
    ),
    Row("track_rps", "eventd /v1/track, 64 conns, synchronous=full", "req/s"),
    Row("track_p50", "eventd /v1/track latency p50", "ms", 2),
    Row("track_p99", "eventd /v1/track latency p99", "ms", 2),
    Row("track_ratio", "eventd /v1/track / ceiling A", "%", 1),
    Row("track_cpu_ratio", "eventd /v1/track / ceiling A, per CPU-second", "%", 1),
    Row("batch_eps", "eventd /v1/batch x100, 16 conns", "events/s"),
    Row("batch_p50", "eventd /v1/batch latency p50", "ms", 2),
    Row("batch_p99", "eventd /v1/batch latency p99", "ms", 2),
    Row("batch_ratio", "eventd /v1/batch / ceiling B", "%", 1),
    Row("batch_uuid_eps", "eventd /v1/batch x100, UUID messageIds (as SDKs send)", "events/s"),
    Row(
        "prefilled_uuid_eps",
        "eventd /v1/batch x100, UUID messageIds, store prefilled with N UUID events",
        "events/s",
    ),
    Row("track_cpu", "eventd /v1/track per CPU-second of eventd", "events/CPU-s"),
    Row("batch_cpu", "eventd /v1/batch x100 per CPU-second of eventd", "events/CPU-s"),
    Row("batch_uuid_cpu", "eventd /v1/batch x100, UUIDs, per CPU-second", "events/CPU-s"),
    Row("prefilled_uuid_cpu", "the same, store prefilled with N, per CPU-second", "events/CPU-s"),
    Row("prefilled_fresh_eps", "  the same into a fresh store, just before and after", "events/s"),
    Row("prefilled_fresh_cpu", "  the same into a fresh store, per CPU-second", "events/CPU-s"),
    Row("prefilled_ratio", "  store prefilled with N / fresh store", "%", 1),
    Row("prefilled_cpu_ratio", "  store prefilled with N / fresh store, per CPU-second", "%", 1),
    Row("delivery_1", "delivery, prefilled outbox -> 1 batching webhook", "events/s"),
    Row("delivery_1_cpu", "  the same, per CPU-second of eventd's process", "events/CPU-s"),
    Row("track_rps_duckdb", "eventd /v1/track, with the duckdb destination", "req/s"),
    Row("track_duckdb_ratio", "  /v1/track with duckdb / without", "%", 1),
    Row("batch_eps_duckdb", "eventd /v1/batch x100, with the duckdb destination", "events/s"),
    Row("batch_duckdb_ratio", "  /v1/batch with duckdb / without", "%", 1),
    Row("batch_uuid_eps_duckdb", "/v1/batch, UUID messageIds, with duckdb", "events/s"),
    Row("delivery_1_duckdb", "delivery -> 1 webhook, with the duckdb destination", "events/s"),
    Row("delivery_duckdb_ratio", "  delivery with duckdb / without", "%", 1),
    Row("delivery_1_ordered", "delivery -> 1 webhook, ordered = true", "events/s"),
    Row("delivery_1_ordered_cpu", "  the same, per CPU-second of eventd's process", "events/CPU-s"),
    Row("delivery_ordered_ratio", "  ordered / not", "%", 1),
    Row("delivery_n", "delivery -> 4 webhooks at once (sum)", "events/s"),
    Row("delivery_n_each", "delivery -> 4 webhooks at once (each)", "events/s"),
    Row("e2e_rate", "e2e load: single events at 50 % of /v1/track max", "req/s"),
    Row("e2e_p50", "e2e latency p50 (200 -> sink)", "ms", 1),
    Row("e2e_p99", "e2e latency p99 (200 -> sink)", "ms", 1),
    Row("e2e_ack_p99", "ack latency p99 at that load", "ms", 1),
    Row("rss_empty", "RSS, empty store, after start", "MiB", 1),
    Row("rss_backlog", "RSS, backlog undelivered (sink refusing), peak", "MiB", 1),
    Row("rss_draining", "RSS while draining the backlog, peak", "MiB", 1),
    Row("drain_backlog", "drain rate of the backlog", "events/s"),
)


@dataclass(frozen=True)
class Target:
    label: str
    key: str
    ok: Callable[[float], bool]
    goal: str


# Issue 18's targets (the original 50,000 / 50 ms / 200 MiB were the first issue's).
TARGETS: tuple[Target, ...] = (
    Target("single-event ingest vs ceiling A", "track_ratio", lambda v: v >= 60, ">= 60 %"),
    Target(
        "batch ingest, UUID messageIds",
        "batch_uuid_eps",
        lambda v: v >= 100_000,
        ">= 100,000 events/s",
    ),
    Target(
        "delivery to one batching sink",
        "delivery_1",
        lambda v: v >= 140_000,
        ">= 140,000 events/s",
    ),
    Target("e2e p99 at half load", "e2e_p99", lambda v: v < 10, "< 10 ms"),
    Target("RSS with the backlog", "rss_backlog", lambda v: v < 100, "< 100 MiB"),
    Target("RSS while draining it", "rss_draining", lambda v: v < 100, "< 100 MiB"),
)


def add_ratios(r: Round) -> Round:
    out = dict(r)
    if r.get("ceiling_a_rps") and "track_rps" in r:
        out["track_ratio"] = 100 * r["track_rps"] / r["ceiling_a_rps"]
    if r.get("ceiling_a_cpu") and "track_cpu" in r:
        # what each costs in CPU, which the others' load on a shared machine moves less
        out["track_cpu_ratio"] = 100 * r["track_cpu"] / r["ceiling_a_cpu"]
    if r.get("ceiling_b_outbox") and "batch_eps" in r:
        out["batch_ratio"] = 100 * r["batch_eps"] / r["ceiling_b_outbox"]
    # the cost must not grow with the store (issue 18): the same moment's fresh store
    for ratio, key, fresh in (
        ("prefilled_ratio", "prefilled_uuid_eps", "prefilled_fresh_eps"),
        ("prefilled_cpu_ratio", "prefilled_uuid_cpu", "prefilled_fresh_cpu"),
    ):
        if r.get(fresh) and key in r:
            out[ratio] = 100 * r[key] / r[fresh]
    for ratio, key in (
        ("track_duckdb_ratio", "track_rps"),
        ("batch_duckdb_ratio", "batch_eps"),
        ("delivery_duckdb_ratio", "delivery_1"),
    ):
        if r.get(key) and f"{key}_duckdb" in r:
            out[ratio] = 100 * r[f"{key}_duckdb"] / r[key]
    if r.get("delivery_1") and "delivery_1_ordered" in r:
        out["delivery_ordered_ratio"] = 100 * r["delivery_1_ordered"] / r["delivery_1"]
    return out


def summary(rounds: list[Round]) -> dict[str, tuple[float, float, float, int]]:
    """metric -> (median, min, max, runs)."""
    keys = {k for r in rounds for k in r}
    out = {}
    for k in keys:
        values = [r[k] for r in rounds if k in r]
        out[k] = (statistics.median(values), min(values), max(values), len(values))
    return out


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def table(
    rounds: list[Round], backlog_events: int, delivery_events: int, prefilled_events: int = 0
) -> str:
    stats = summary(rounds)
    lines = [
        "| measurement | median | min | max | unit | runs |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for row in ROWS:
        if row.key not in stats:
            continue
        med, lo, hi, n = stats[row.key]
        label = (
            row.label.replace("backlog", f"backlog of {backlog_events:,}", 1)
            .replace("prefilled outbox", f"prefilled outbox of {delivery_events:,}")
            .replace("prefilled with N", f"prefilled with {prefilled_events:,}")
        )
        lines.append(
            f"| {label} | {_fmt(med, row.digits)} | {_fmt(lo, row.digits)} | "
            f"{_fmt(hi, row.digits)} | {row.unit} | {n} |"
        )
    return "\n".join(lines)


def targets(rounds: list[Round]) -> tuple[str, bool]:
    """The targets table (on medians) and whether all were met."""
    stats = summary(rounds)
    lines = ["| target | goal | median | met |", "|---|---|---:|---|"]
    all_met = True
    for t in TARGETS:
        if t.key not in stats:
            continue
        med = stats[t.key][0]
        met = t.ok(med)
        all_met &= met
        row = next(r for r in ROWS if r.key == t.key)
        lines.append(
            f"| {t.label} | {t.goal} | {_fmt(med, row.digits)} {row.unit} | "
            f"{'met' if met else 'MISSED'} |"
        )
    return "\n".join(lines), all_met
