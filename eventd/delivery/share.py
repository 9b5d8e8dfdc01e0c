"""A destination's ``max_in_flight`` and ``rate_limit`` as this node's part of them.

On one machine a node's part is the whole limit. On a cluster every node delivers
the same destination (they share its durable consumer), so each node takes its part
of the limit, from :attr:`Store.limit_share` ``(place, nodes)``: the live nodes as of
the last heartbeat round (``S_LEASES`` ``node-<id>`` keys, which expire after the
lease TTL) and this node's place among them in node-id order.

- ``max_in_flight`` M over N nodes: ``M // N`` each, and one more for the first
  ``M % N`` places, so the parts add up to exactly M while the nodes agree on who is
  alive (N > M: every node still gets 1, so the total is N; a node must progress).
- ``rate_limit`` R over N nodes: ``R / N`` each (a token bucket per node, GCRA as in
  ratelimit.py), so over any window the total stays within one batch per node of
  ``R * window``.

The share is read again at every acquire and every booking, so a node that joins or
dies changes every node's part without a restart. A node that dies is still counted
by the others until its heartbeat expired and then one lease TTL of readings more
(about 22 s; a live node's beat can vanish for a moment after a quorum loss:
eventd/store/live_nodes.py): meanwhile the total is below the limit, never above. A
node that joins beats once before it serves and reads the list itself, so it starts
with its part; the others lower theirs at their next read (every 2 s), the one
moment the total can exceed the limit. A node with no work for a destination leaves
its part unused: the simplest scheme, with no cross-node booking on the hot path
(docs/scaling.md says why).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Share = Callable[[], tuple[int, int]]  # (place, nodes), e.g. Store.limit_share


def part(limit: int, place: int, nodes: int) -> int:
    """This node's part of an integer limit: the parts of places 0..nodes-1 add up
    to ``limit`` (each at least 1)."""
    nodes = max(1, nodes)
    return max(1, limit // nodes + (1 if place % nodes < limit % nodes else 0))


class Slots:
    """Batches in flight to one destination, at most this node's part of
    ``max_in_flight`` (re-read at every acquire: a shrink lets the batches out finish,
    and no new one starts until they are under the new part)."""

    def __init__(self, limit: int, share: Share = lambda: (0, 1)) -> None:
        self.limit = limit
        self.share = share
        self.used = 0
        self._freed = asyncio.Event()

    @property
    def capacity(self) -> int:
        return part(self.limit, *self.share())

    async def acquire(self) -> None:
        while self.used >= self.capacity:
            self._freed.clear()
            if self.share()[1] == 1:
                await self._freed.wait()  # the whole limit already: only a release helps
                continue
            # The part may grow without a release (a node died): look again each
            # second rather than only when a batch ends.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), 1.0)
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._freed.set()
