"""What the admin API reads from a request: its JSON body, times, ids, and the
``400 {"code", "message"}`` a bad one gets (:class:`BadRequest`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from eventd.config import parse_duration
from eventd.store import now_ms

# The range of a stored integer (SQLite's INTEGER): a bigger one matches nothing.
INT_MAX = 2**63 - 1
# Ids per redrive request.
MAX_REDRIVE_IDS = 10000


class BadRequest(Exception):
    """Answered as 400 bad_request with this message."""


def parse_time(value: object, name: str) -> int | None:
    """An ISO-8601 time or a duration ago ('2h', '7d', or seconds) -> unix ms."""
    if value is None or value == "":
        return None
    expected = f"{name}={value!r}: expected an ISO-8601 time or a duration like '2h'"
    try:
        ms = now_ms() - parse_duration(value) * 1000
    except ValueError:
        if not isinstance(value, str):
            raise BadRequest(expected) from None
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(expected) from None
        ms = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000
    if not -INT_MAX <= ms <= INT_MAX:  # a huge duration: -inf, or past int64
        raise BadRequest(f"{name}={value!r}: out of range")
    return int(ms)


def redrive_ids(value: object) -> list[int]:
    """The ``ids`` of a redrive request: a list of dead-letter ids (may be empty)."""
    ids = value or []
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= INT_MAX for i in ids
    ):
        raise BadRequest("ids: expected a list of dead-letter ids")
    if len(ids) > MAX_REDRIVE_IDS:
        raise BadRequest(f"ids: at most {MAX_REDRIVE_IDS} per request")
    return ids


def user_id(body: dict[str, Any]) -> str:
    value = body.get("user_id")
    if not isinstance(value, str) or not value:
        raise BadRequest("user_id: expected the userId, a non-empty string")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body: expected a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    return body
