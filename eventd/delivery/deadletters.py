"""Dead letters: where an event a destination gave up on is written, with its reason.

The stored body is kept (not what a transform made of it), so a redrive delivers
and transforms what was stored. A write the store refuses (disk full) is retried
until it lands: a dead letter is never dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from eventd.delivery.settle import backoff
from eventd.event import Event
from eventd.metrics import Metrics
from eventd.store import NewDeadLetter, StorageUnavailable, Store

log = structlog.get_logger("eventd.delivery")


async def until_stored(
    write: Callable[[], Awaitable[object]], destination: str, base: float, ceiling: float
) -> None:
    """Run a store write again and again (with backoff) until it is stored."""
    attempt = 0
    while True:
        try:
            await write()
            return
        except StorageUnavailable as exc:
            attempt += 1
            log.warning("write failed; will retry", destination=destination, error=str(exc))
            await asyncio.sleep(backoff(attempt, None, base, ceiling))


def new_dead_letter(event: Event, reason: str) -> NewDeadLetter:
    message_id = event.message.get("messageId", "")
    return NewDeadLetter(
        seq=event.seq,
        source=event.source,
        message_id=message_id if isinstance(message_id, str) else str(message_id),
        received_at=event.received_at,
        body=event.body,  # as stored, whatever a destination did to its message
        error=reason,
    )


async def bury(
    store: Store,
    metrics: Metrics,
    destination: str,
    dead: Sequence[tuple[Event, str]],
    attempts: int,
    backoff_base: float,
    backoff_max: float,
) -> None:
    """Write a settled batch's dead letters (retrying while the store refuses)."""
    if not dead:
        return
    letters = [new_dead_letter(e, reason) for e, reason in dead]
    await until_stored(
        lambda: store.add_dead_letters(destination, letters, attempts),
        destination,
        backoff_base,
        backoff_max,
    )
    metrics.dead_lettered.labels(destination).inc(len(letters))
    log.warning(
        "dead-lettered", destination=destination, events=len(letters), reason=dead[0][1][:200]
    )
