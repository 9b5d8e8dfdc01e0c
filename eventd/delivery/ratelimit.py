"""Per-destination rate limiting: events per second, as a virtual-time token bucket (GCRA).

``reserve(n)`` books ``n`` events and says how long to wait before sending them.
Booking is exact (each batch starts ``n / rate`` after the previous one), so over
any window the count stays within one batch of ``rate * window``. On a cluster the
rate is this node's part, ``rate / nodes`` (share.py), read at every booking.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from eventd.delivery.share import Share


class RateLimiter:
    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        share: Share = lambda: (0, 1),
    ) -> None:
        self.rate = rate
        self._clock = clock
        self.share = share  # (place, nodes): this node books rate / nodes
        self._next_free = 0.0

    def reserve(self, n: int) -> float:
        """Book ``n`` events; the seconds to wait before sending them (0 when unlimited)."""
        if not self.rate:
            return 0.0
        now = self._clock()
        start = max(now, self._next_free)
        _, nodes = self.share()
        self._next_free = start + n * max(1, nodes) / self.rate
        return start - now
