"""What a ``/metrics`` scrape waits for: the reading of the store-wide figures
(``Dispatcher.status()``: each destination's lag, dead letters; on the cluster the
ingest gauges too), bounded, one at a time.

On SQLite that reading takes milliseconds. On the cluster it asks the servers, and
during a quorum loss it fails, or waits for answers that do not come (issue 14's
fourth trial: ``/metrics`` answered 503 for the whole loss, and a scrape right after
SIGCONT hung over 30 s). A scrape must answer within Prometheus' timeout (10 s by
default) with what the node knows, so it waits for the reading at most
:data:`SCRAPE_WAIT`; the reading goes on in the background when it takes longer
(its answers still fill the gauges when they come; it is not cancelled: it may be
recreating a consumer), and later scrapes wait on that same reading rather than
start another. The node's own figures (counters, pending events) are always
served; the lag gauges keep the last good reading's values, and two gauges say
how good they are: ``eventd_lag_reading_ok`` (0: this scrape's reading failed or
is still running) and ``eventd_lag_reading_age_seconds`` (since the last reading
that answered; +Inf before any did).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from eventd.metrics import Metrics

log = structlog.get_logger("eventd.admin")

# Seconds a scrape waits for the reading: well inside Prometheus' default scrape
# timeout (10 s), with room for the exposition and the network.
SCRAPE_WAIT = 5.0


class ScrapeReading:
    """``read``: the reading (``Dispatcher.status``, which fills the lag gauges);
    ``clock``: seconds, monotonic (time.monotonic)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[object]],
        metrics: Metrics,
        wait: float = SCRAPE_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._metrics = metrics
        self._wait = wait
        self._clock = clock
        self._running: asyncio.Task[bool] | None = None
        self._good_at: float | None = None  # clock() when a reading last answered

    async def refresh(self) -> bool:
        """Wait up to ``wait`` seconds for a reading (the one running, else a new one),
        then set the two gauges; True when it answered in time. Never raises."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._once(), name="scrape-reading")
        # asyncio.wait cancels nothing: a scrape that times out or goes away leaves
        # the reading running.
        running = self._running
        done, _ = await asyncio.wait({running}, timeout=self._wait)
        ok = bool(done) and not running.cancelled() and running.result()
        self._metrics.lag_reading_ok.set(1 if ok else 0)
        age = math.inf if self._good_at is None else self._clock() - self._good_at
        self._metrics.lag_reading_age.set(age)
        return ok

    async def _once(self) -> bool:
        try:
            await self._read()
        except Exception as exc:  # StorageUnavailable, or whatever the client raised
            log.info("metrics: the lag reading failed", error=repr(exc))
            return False
        self._good_at = self._clock()
        return True
