"""Prometheus metrics: every instrument eventd exports, in one registry per app.

A registry per app (not the global one) keeps test apps in one process apart.
Modules receive a :class:`Metrics` and only observe into it; gauges that are
cheaper to read than to maintain are filled at scrape time: lag by
``Dispatcher.status()`` and the store's size by the admin's ``/metrics`` handler,
a plugin's own by a callback registered with :meth:`Metrics.on_scrape`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ingested = Counter(
            "eventd_ingested_events", "Events accepted and stored", ["source", "type"], registry=r
        )
        self.duplicates = Counter(
            "eventd_duplicate_events",
            "Events acknowledged but not stored again (dedup)",
            registry=r,
        )
        self.dedup_recovered = Counter(
            "eventd_dedup_recovered_keys",
            "Keys the dedup set re-read from the log's tail at start-up or after a failed"
            " write (a crash, a store from before the set): none is lost, none duplicated",
            registry=r,
        )
        self.rejected = Counter(
            "eventd_rejected_events",
            "Events or requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.repaired = Counter(
            "eventd_repaired_events",
            "Events stored with a part repaired (invalid_unicode, unreadable_timestamp,"
            " unreadable_sent_at, skew_out_of_range), by reason; see context.repaired",
            ["reason"],
            registry=r,
        )
        self.plan_findings = Counter(
            "eventd_tracking_plan_findings",
            "Events forwarded off their source's tracking plan, by source and kind"
            " (unplanned_event, schema); blocked ones count as rejected",
            ["source", "kind"],
            registry=r,
        )
        self.suppressed = Counter(
            "eventd_suppressed_events",
            "Events of suppressed users, acknowledged and not stored, by source",
            ["source"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "eventd_request_seconds",
            "Tracking API request latency",
            ["path"],
            buckets=_LATENCY,
            registry=r,
        )
        self.commit_events = Histogram(
            "eventd_commit_events", "Events per group commit", buckets=_BATCH, registry=r
        )
        self.commit_seconds = Histogram(
            "eventd_commit_seconds", "Group commit latency", buckets=_LATENCY, registry=r
        )
        self.commit_failures = Counter(
            "eventd_commit_failures", "Group commits that failed (disk full, ...)", registry=r
        )
        self.delivered = Counter(
            "eventd_delivered_events", "Events delivered", ["destination"], registry=r
        )
        self.retried = Counter(
            "eventd_retried_events",
            "Event delivery attempts to retry",
            ["destination"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "eventd_dead_lettered_events",
            "Events moved to dead letters",
            ["destination"],
            registry=r,
        )
        self.skipped = Counter(
            "eventd_skipped_events",
            "Events a destination does not take, by reason",
            ["destination", "reason"],
            registry=r,
        )
        self.adjusted = Counter(
            "eventd_adjusted_events",
            "Events delivered with changes made to fit the destination's rules, by reason",
            ["destination", "reason"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "eventd_delivery_seconds",
            "Latency of one deliver() call",
            ["destination", "outcome"],
            buckets=_LATENCY,
            registry=r,
        )
        self.lag_events = Gauge(
            "eventd_lag_events",
            "Stored events a destination has not passed",
            ["destination"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "eventd_lag_seconds",
            "Age of the oldest event a destination has not passed",
            ["destination"],
            registry=r,
        )
        self.lag_estimated = Gauge(
            "eventd_lag_estimated",
            "1 when eventd_lag_events is an estimate (a long backlog on the cluster is read"
            " a part per reading, the rest counted at the mean of the messages read)",
            ["destination"],
            registry=r,
        )
        # How good the lag gauges above are (eventd/admin/scrape.py): the reading that
        # fills them asks the cluster, which may not answer; the gauges then keep the
        # last good reading's values.
        self.lag_reading_ok = Gauge(
            "eventd_lag_reading_ok",
            "1 when this scrape's reading of the lag gauges answered in time; 0: they"
            " hold the last good reading's values (see eventd_lag_reading_age_seconds)",
            registry=r,
        )
        self.lag_reading_age = Gauge(
            "eventd_lag_reading_age_seconds",
            "Seconds since the lag gauges were last read (+Inf: never)",
            registry=r,
        )
        self.dead_letters = Gauge(
            "eventd_dead_letters", "Dead letters held", ["destination"], registry=r
        )
        self.outbox_bytes = Gauge(
            "eventd_outbox_bytes", "Size of the database files on disk", registry=r
        )
        self.pending_events = Gauge(
            "eventd_pending_events",
            "Events received and waiting for their commit (ingest answers 429 past"
            " server.max_pending_events)",
            registry=r,
        )
        self.storage_writable = Gauge(
            "eventd_storage_writable", "1 when the last commit succeeded", registry=r
        )
        # The cluster's (docs/scaling.md): a dedup or log consumer found out of step
        # with its stream, by consumer and reason (ahead, stranded, stuck, unacked, missing,
        # log_lost; silent: a dedup stage that made no progress, stopped and restarted);
        # groups acknowledged and waiting for their dedup stage.
        self.consumer_faults = Counter(
            "eventd_cluster_consumer_faults",
            "Consumers found out of step with their stream"
            " (ahead, stranded, stuck, unacked, missing, log_lost, silent)",
            ["consumer", "reason"],
            registry=r,
        )
        self.ingest_waiting = Gauge(
            "eventd_ingest_waiting_groups",
            "Groups acknowledged and waiting in the cluster's ingest stream for dedup",
            registry=r,
        )
        # Per partition: the age of the oldest group waiting for its dedup stage, the
        # figure to alert on when no node runs a partition's stage (set with the lag).
        self.dedup_waiting = Gauge(
            "eventd_dedup_waiting_seconds",
            "Age of the oldest group acknowledged and waiting in the cluster's ingest stream"
            " for its partition's dedup stage (0: none waits)",
            ["partition"],
            registry=r,
        )
        # Per partition: 1 where this node runs its dedup stage (it holds the lease and
        # the stage's task runs): which node to look at when a partition waits.
        self.dedup_stages = Gauge(
            "eventd_dedup_stage_running",
            "1 for each partition whose dedup stage runs on this node",
            ["partition"],
            registry=r,
        )
        # A stream's leader asked to step down by this node, by stream and reason
        # (lease_timeouts: the lease bucket's writes timed out while the cluster answered).
        self.stepdowns = Counter(
            "eventd_cluster_stepdowns",
            "Stream leaders this node asked to step down, by stream and reason",
            ["stream", "reason"],
            registry=r,
        )
        self._scrape_hooks: list[Callable[[], None]] = []

    def adjusted_counter(self, destination: str) -> Callable[[str, int], None]:
        """``count(reason, events)`` for one destination (its ``on_adjusted``)."""

        def count(reason: str, events: int) -> None:
            self.adjusted.labels(destination, reason).inc(events)

        return count

    def on_scrape(self, hook: Callable[[], None]) -> None:
        self._scrape_hooks.append(hook)

    def exposition(self) -> bytes:
        for hook in self._scrape_hooks:
            hook()
        return generate_latest(self.registry)
