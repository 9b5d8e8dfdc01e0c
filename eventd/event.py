"""The stored event as every part of eventd sees it: the store reads it, the
dispatcher routes it, transforms rewrite it and a destination maps it.

It sits below everything (no eventd imports) so the store can hand out events
without depending on the plugin API.
"""

from __future__ import annotations

from typing import Any

from eventd import codec


class Event:
    """One stored event as a destination sees it.

    ``body`` is its JSON as stored; ``message``, the normalized Segment message, is
    parsed from it on first use, so routing an event without ``integrations`` and a
    destination that forwards the JSON as it is (a batching webhook) never parse it.
    """

    __slots__ = ("_body", "_message", "received_at", "seq", "size", "source", "user_id")

    def __init__(
        self,
        seq: int,
        source: str,
        received_at: int,  # unix ms
        message: dict[str, Any] | None = None,
        size: int | None = None,  # bytes of its JSON
        *,
        body: bytes | None = None,
        user_id: str | None = None,  # as stored beside it: checked without parsing
    ) -> None:
        if message is None and body is None:
            raise TypeError("an Event needs its message or its JSON body")
        self.seq = seq
        self.source = source
        self.received_at = received_at
        self.user_id = user_id
        self._message = message
        self._body = body
        self.size = size if size is not None else len(self.body)

    @property
    def message(self) -> dict[str, Any]:
        if self._message is None:
            assert self._body is not None
            self._message = codec.loads(self._body)  # every digit kept
        return self._message

    @property
    def body(self) -> bytes:
        """Its JSON: as stored, or serialized from a message built in memory."""
        if self._body is None:
            self._body = codec.dumps(self._message)
        return self._body

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, source={self.source!r}, size={self.size})"
