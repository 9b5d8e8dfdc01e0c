"""Transforms: user functions that change or drop events on their way to a destination.

A transform is a function from a Segment message (a dict of its own, safe to
change) to the message to send, or None to drop the event for that destination.
It may be ``async`` (a lookup to enrich events). Plugins provide them by name
through the ``eventd_transforms`` hook; a destination applies the ones named in
its ``transforms`` list, in order, just before delivery.

The stored event never changes: a retry, a redrive or a replay transforms the
stored message again, so a fixed transform fixes what it dead-lettered.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from eventd import codec
from eventd.event import Event

Message = dict[str, Any]
Transform = Callable[[Message], Message | Awaitable[Message | None] | None]


class TransformError(Exception):
    """A transform raised or returned something that is not a message."""


async def transform(event: Event, transforms: Sequence[tuple[str, Transform]]) -> Event | None:
    """``event`` as the transforms leave it, or None when one of them drops it."""
    message: Any = codec.loads(event.body)  # a copy of its own: the stored one stays
    for name, fn in transforms:
        try:
            result = fn(message)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise TransformError(f"transform {name!r} raised {type(exc).__name__}: {exc}") from exc
        if result is None:
            return None
        if not isinstance(result, dict):
            raise TransformError(
                f"transform {name!r} returned {type(result).__name__}: expected a message (dict)"
                " or None"
            )
        message = result
    try:
        body = codec.dumps(message)
    except TypeError as exc:
        raise TransformError(f"the transformed message is not JSON: {exc}") from exc
    return Event(
        event.seq,
        event.source,
        event.received_at,
        message,
        len(body),
        body=body,
        user_id=event.user_id,  # whose event it is does not change with its form
    )
