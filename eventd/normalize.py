"""Validation and normalization of Segment messages, from a client's JSON to what is stored.

Owns the Tracking API's per-message rules (SEGMENT_API.md §1): the call types and
their required fields, id coercion, generated messageIds, skew-corrected
timestamps, batch-level ``context``/``integrations`` merging and ``context.ip``.
Checks are written out rather than run through JSON Schema because they also
coerce (numbers to strings, timestamps) and run on every event of the hot path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
MAX_MESSAGE_ID = 100
# Fields a client sends that are not part of the stored event.
_DROPPED = ("writeKey", "_metadata")
_OBJECT_FIELDS = ("context", "integrations", "properties", "traits")


class InvalidMessage(ValueError):
    """A message breaks the Tracking API's rules; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the request, not the message, contributes to every message in it."""

    received_at: datetime
    ip: str | None = None
    sent_at: str | None = None  # a batch-level sentAt
    context: dict[str, Any] | None = None  # batch-level context, merged under each item's
    integrations: dict[str, Any] | None = None


def format_ts(dt: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, the way Segment writes timestamps."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_ts(value: object, field: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidMessage("invalid_timestamp", f"{field} must be an ISO-8601 string")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(
            "invalid_timestamp", f"{field} is not an ISO-8601 timestamp: {value[:40]!r}"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _id(msg: dict[str, Any], field: str) -> str | None:
    value = msg.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidMessage("invalid_field", f"{field} must be a string or a number")
    return value if isinstance(value, str) else str(value)


def _object(msg: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = msg.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidMessage("invalid_field", f"{field} must be an object")
    return value


def normalize(raw: object, call_type: str | None, env: Envelope) -> dict[str, Any]:
    """Return the stored form of one message or raise :class:`InvalidMessage`.

    ``call_type`` comes from the path (``/v1/track``); for batch items it is
    None and the item's own ``type`` is used.
    """
    if not isinstance(raw, dict):
        raise InvalidMessage("invalid_message", "each message must be a JSON object")
    msg_type = call_type or raw.get("type")
    if not isinstance(msg_type, str) or msg_type not in TYPES:
        raise InvalidMessage(
            "invalid_type", f"type must be one of {', '.join(sorted(TYPES))}, got {msg_type!r}"
        )

    out: dict[str, Any] = {k: v for k, v in raw.items() if k not in _DROPPED and v is not None}
    out["type"] = msg_type
    for field in _OBJECT_FIELDS:
        if _object(raw, field) is None:
            out.pop(field, None)

    user_id = _id(raw, "userId")
    anonymous_id = _id(raw, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise InvalidMessage("missing_user", "userId or anonymousId is required")
    _set(out, "userId", user_id)
    _set(out, "anonymousId", anonymous_id)

    if msg_type == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            raise InvalidMessage("missing_event", "track requires a non-empty event name")
    elif msg_type == "group":
        group_id = _id(raw, "groupId")
        if group_id is None:
            raise InvalidMessage("missing_group", "group requires groupId")
        out["groupId"] = group_id
    elif msg_type == "alias":
        previous_id = _id(raw, "previousId")
        if previous_id is None or user_id is None:
            raise InvalidMessage("missing_alias_ids", "alias requires previousId and userId")
        out["previousId"] = previous_id
    if msg_type in ("page", "screen"):
        for field in ("name", "category"):
            if raw.get(field) is not None and not isinstance(raw[field], str):
                raise InvalidMessage("invalid_field", f"{field} must be a string")

    message_id = raw.get("messageId")
    if message_id is None or message_id == "":
        message_id = str(uuid.uuid4())
    elif not isinstance(message_id, str):
        raise InvalidMessage("invalid_field", "messageId must be a string")
    elif len(message_id) > MAX_MESSAGE_ID:
        raise InvalidMessage("invalid_field", f"messageId is longer than {MAX_MESSAGE_ID}")
    out["messageId"] = message_id

    if env.context:
        out["context"] = {**env.context, **(out.get("context") or {})}
    if env.integrations:
        out["integrations"] = {**env.integrations, **(out.get("integrations") or {})}
    if env.ip and not (out.get("context") or {}).get("ip"):
        out["context"] = {**(out.get("context") or {}), "ip": env.ip}

    _timestamps(raw, out, env)
    return out


def _set(out: dict[str, Any], key: str, value: str | None) -> None:
    if value is None:
        out.pop(key, None)
    else:
        out[key] = value


def _timestamps(raw: dict[str, Any], out: dict[str, Any], env: Envelope) -> None:
    """receivedAt is ours; timestamp is corrected for the client clock's skew.

    timestamp = receivedAt - (sentAt - originalTimestamp), where originalTimestamp
    is what the client called the event's time. Without sentAt the client's time
    is kept; without any client time, receivedAt is used.
    """
    received = env.received_at
    out["receivedAt"] = format_ts(received)
    client_ts = raw.get("timestamp") or raw.get("originalTimestamp")
    sent_raw = raw.get("sentAt") or env.sent_at
    if client_ts is None:
        out["timestamp"] = out["receivedAt"]
        out.pop("originalTimestamp", None)
        if sent_raw is not None:
            out["sentAt"] = format_ts(parse_ts(sent_raw, "sentAt"))
        return
    original = parse_ts(client_ts, "timestamp")
    out["originalTimestamp"] = format_ts(original)
    if sent_raw is None:
        out["timestamp"] = out["originalTimestamp"]
        return
    sent = parse_ts(sent_raw, "sentAt")
    out["sentAt"] = format_ts(sent)
    out["timestamp"] = format_ts(received - (sent - original))
