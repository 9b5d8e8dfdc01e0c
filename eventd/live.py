"""The live event stream (Segment's debugger): accepted and rejected events, fanned out.

Each subscriber has a bounded queue; when a reader is slow its queue fills and
further items are dropped for it (and counted), so a subscriber can never stall
ingest. Publishing with no subscribers costs one length check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Subscriber:
    source: str | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1000)
    )
    dropped: int = 0


class LiveHub:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, source: str | None = None) -> Subscriber:
        sub = Subscriber(source=source)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.remove(sub)

    def publish(self, source: str, item: dict[str, Any]) -> None:
        for sub in self._subscribers:
            if sub.source is not None and sub.source != source:
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped += 1
