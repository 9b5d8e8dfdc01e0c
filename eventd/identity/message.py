"""What the identity graph reads of a stored event, and nothing more.

The graph needs a few fields of each event (ids, type, timestamp, traits, revenue,
groupId) and the writer parses every event of the log: a full parse of each body
(its context.library, userAgent, page, properties...) was a quarter of the writer's
time (issue 15: 5.7 of 23 us per event). :func:`parse` decodes the body into a
:class:`Message` with msgspec, which skips every other field without building it.

Values are kept exactly as sent: msgspec reads an integer of any width as a Python
int (orjson would read one past 64 bits as a float), so a trait holding one reaches
profiles and ``enrich_traits`` unchanged (issue 12, eventd/codec.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from eventd import codec


# gc=False: what a body decodes to holds JSON values only (no reference cycles can
# form), so the collector need not track a page's thousands of them.
class Context(msgspec.Struct, gc=False):
    traits: Any = None


class Properties(msgspec.Struct, gc=False):
    revenue: Any = None


class Message(msgspec.Struct, gc=False):
    """The fields of a Segment message the graph uses (SEGMENT_API.md); absent ones are
    None. Field names are the wire's (camelCase)."""

    type: Any = None
    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None
    groupId: Any = None
    timestamp: Any = None
    traits: Any = None
    context: Context | None = None
    properties: Properties | None = None

    @classmethod
    def of(cls, msg: Mapping[str, Any]) -> Message:
        """From a parsed message (tests; a body whose context or properties is no object)."""
        context, props = msg.get("context"), msg.get("properties")
        return cls(
            msg.get("type"),
            msg.get("userId"),
            msg.get("anonymousId"),
            msg.get("previousId"),
            msg.get("groupId"),
            msg.get("timestamp"),
            msg.get("traits"),
            Context(context.get("traits")) if isinstance(context, dict) else None,
            Properties(props.get("revenue")) if isinstance(props, dict) else None,
        )


_decoder = msgspec.json.Decoder(Message)


def parse_page(bodies: list[bytes]) -> list[Message]:
    """:func:`parse` of each body. A call to the decoder per body: joining a page into
    one JSON array to decode at once cost more than it saved (the join's ``b"[" + ... +
    b"]"`` copies the page twice: 1.5 vs 0.7 us per event on bench.identity's mix)."""
    decode = _decoder.decode
    try:
        return [decode(body) for body in bodies]
    except msgspec.DecodeError:  # one body is not as expected: each on its own
        return [parse(body) for body in bodies]


def parse_lines(joined: bytes, count: int) -> list[Message] | None:
    """:func:`parse` of ``count`` bodies joined by newlines, in one call (no bytes object
    per body; the reader's ``lines``); None when one body is not as expected (then each
    is parsed on its own, from the page's rows) or the count differs."""
    try:
        msgs = _decoder.decode_lines(joined)
    except msgspec.DecodeError:  # ValidationError is one
        return None
    return msgs if len(msgs) == count else None


def parse(body: bytes) -> Message:
    """The graph's fields of a stored event's JSON body. Raises ``ValueError`` when the
    body is no JSON object (a stored body always is one)."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError:
        # "context" or "properties" holds something other than an object: the graph
        # ignores it, as it ignores any field it does not know.
        parsed = codec.loads(body)
        if not isinstance(parsed, dict):
            raise ValueError("a stored event's body is not a JSON object") from None
        return Message.of(parsed)
    except msgspec.DecodeError as exc:
        raise ValueError(f"a stored event's body is not JSON: {exc}") from None
