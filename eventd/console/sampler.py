"""Recent history for the console's small charts: ingest per source, rejects, lag.

A background service (``eventd_services``) that every ``interval`` seconds reads the
server's Prometheus exposition (the same text ``/metrics`` serves, lag gauges filled
first as ``/metrics`` fills them, so it depends on the metric names eventd
documents, not on internals) and keeps the last hour of samples in memory. The
overview turns them into events per minute and lag sparklines.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client.parser import text_string_to_metric_families

from eventd.tasks import cancel

log = structlog.get_logger("eventd.console.sampler")

INTERVAL = 10.0  # seconds between samples
KEEP = 3600.0  # seconds of history


def sample(exposition: bytes, at: float) -> dict[str, Any]:
    """One sample from a Prometheus text exposition.

    Shape: ``{"t": unix seconds, "ingested": {source: total events}, "rejected": total,
    "lag_events": {destination: events}, "lag_seconds": {destination: seconds}}``;
    counters are running totals (the reader takes differences).
    """
    out: dict[str, Any] = {
        "t": round(at, 3),
        "ingested": {},
        "rejected": 0,
        "lag_events": {},
        "lag_seconds": {},
    }
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            if s.name == "eventd_ingested_events_total":
                src = s.labels["source"]
                out["ingested"][src] = out["ingested"].get(src, 0) + int(s.value)
            elif s.name == "eventd_rejected_events_total":
                out["rejected"] += int(s.value)
            elif s.name in ("eventd_lag_events", "eventd_lag_seconds"):
                out[s.name.removeprefix("eventd_")][s.labels["destination"]] = s.value
    return out


class Sampler:
    """Keeps :func:`sample` of ``await exposition()`` every ``interval`` s, for ``KEEP``
    seconds."""

    name = "console-sampler"

    def __init__(
        self,
        exposition: Callable[[], Awaitable[bytes]],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.exposition = exposition
        self.interval = interval
        self.clock = clock
        self.samples: deque[dict[str, Any]] = deque(maxlen=int(KEEP / interval) + 1)
        self._task: asyncio.Task[None] | None = None

    async def take(self) -> dict[str, Any]:
        return sample(await self.exposition(), self.clock())

    async def history(self) -> dict[str, Any]:
        """Kept samples, oldest first, then one taken now (so a fresh server has two)."""
        return {"interval": self.interval, "samples": [*self.samples, await self.take()]}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append(await self.take())
            except Exception as exc:  # an observer: whatever failed, the next sample
                # A cluster slow to answer (a nats-server gone, a lost quorum): this
                # sample is missing, the next is taken; the task ending here left the
                # console's charts frozen (and once made the shutdown fail).
                log.info("console sample skipped", error=repr(exc))
            await asyncio.sleep(self.interval)  # a period, not a wait for a condition
