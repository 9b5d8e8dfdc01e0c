"""The events the benchmarks send and store: one realistic track call, ~600 B stored.

Every request must carry a new messageId (a repeat is deduplicated and measures
nothing), so bodies are templates cut around the messageId: ``head + mid + tail``.
The same cut serves wrk's Lua script, the Python load generator and the rows
written straight into an outbox file.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from eventd.normalize import Envelope, normalize
from eventd.store import EventRow

SOURCE = "bench"
WRITE_KEY = "wk_bench_0123456789"
AUTHORIZATION = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
_MARK = "@@MESSAGE-ID@@"


def raw_event(message_id: str, *, with_type: bool = False) -> dict[str, Any]:
    """A track call as an SDK sends it (``type`` only inside a batch)."""
    event: dict[str, Any] = {
        "event": "Order Completed",
        "userId": "user-0012345",
        "anonymousId": "3f1c2d4a-5e6f-4a1b-9c8d-7e6f5a4b3c2d",
        "messageId": message_id,
        "timestamp": "2025-01-15T10:30:00.000Z",
        "properties": {
            "orderId": "ord-98765",
            "total": 129.99,
            "currency": "USD",
            "products": [{"sku": "SKU-1042", "price": 59.99, "quantity": 2}],
        },
        "context": {
            "library": {"name": "analytics-python", "version": "2.3.2"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0",
            "locale": "en-US",
            "page": {"path": "/checkout/complete"},
        },
    }
    if with_type:
        event = {"type": "track", **event}
    return event


def _cut(data: bytes) -> tuple[bytes, bytes]:
    head, _, tail = data.partition(_MARK.encode())
    return head, tail


def track_body() -> tuple[bytes, bytes]:
    """``/v1/track`` body as (head, tail) around the messageId."""
    return _cut(orjson.dumps(raw_event(_MARK)))


def batch_item() -> tuple[bytes, bytes]:
    """One ``/v1/batch`` item as (head, tail) around the messageId."""
    return _cut(orjson.dumps(raw_event(_MARK, with_type=True)))


def batch_body(head: bytes, tail: bytes, ids: list[bytes]) -> bytes:
    """A ``{"batch": [...]}`` body of one item per id."""
    items = b",".join(head + mid + tail for mid in ids)
    return b'{"batch":[' + items + b"]}"


def stored_body() -> tuple[bytes, bytes]:
    """What eventd stores for one event (normalized), as (head, tail) around the messageId."""
    env = Envelope(received_at=datetime.now(UTC), ip="127.0.0.1")
    return _cut(orjson.dumps(normalize(raw_event(_MARK), "track", env)))


def stored_rows(
    prefix: str, start: int, count: int, received_ms: int, *, uuids: bool = False
) -> Iterator[EventRow]:
    """Rows exactly as eventd's ingest writes them (see ``Ingest._rows``); messageIds
    ``{prefix}-{n}``, or random UUIDs as the SDKs send them."""
    head, tail = stored_body()
    for i in range(start, start + count):
        mid = str(uuid.uuid4()) if uuids else f"{prefix}-{i}"
        yield (
            SOURCE,
            mid,
            "track",
            "Order Completed",
            "user-0012345",
            "3f1c2d4a-5e6f-4a1b-9c8d-7e6f5a4b3c2d",
            received_ms,
            head + mid.encode() + tail,
        )
