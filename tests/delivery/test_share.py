"""eventd/delivery/share.py: a node's part of a destination's limits."""

from __future__ import annotations

import asyncio

from eventd.delivery.ratelimit import RateLimiter
from eventd.delivery.share import Slots, part


def test_parts_add_up_to_the_limit() -> None:
    for limit in range(1, 20):
        for nodes in range(1, 8):
            parts = [part(limit, place, nodes) for place in range(nodes)]
            assert sum(parts) == max(limit, nodes), (limit, nodes, parts)
            assert max(parts) - min(parts) <= 1


async def test_slots_follow_the_share_as_nodes_come_and_go() -> None:
    share = (1, 3)  # max_in_flight 4 over 3 nodes: place 1 gets 1
    slots = Slots(4, lambda: share)
    await slots.acquire()
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)  # let it try: the part is full
    assert not second.done() and slots.used == 1
    share = (1, 2)  # a node died: this place's part is 2, with no batch ending
    await asyncio.wait_for(second, 5)
    assert slots.used == 2
    share = (1, 4)  # two joined: part 1; the two out finish, no new one starts
    third = asyncio.create_task(slots.acquire())
    slots.release()
    await asyncio.sleep(0)
    assert not third.done()
    slots.release()
    await asyncio.wait_for(third, 5)
    assert slots.used == 1


def test_rate_is_divided_by_the_live_nodes() -> None:
    now = 0.0
    limiter = RateLimiter(10.0, clock=lambda: now, share=lambda: (0, 2))
    assert limiter.reserve(5) == 0.0
    assert limiter.reserve(5) == 1.0  # 5 events at 10/2 per s: the next starts 1 s later
