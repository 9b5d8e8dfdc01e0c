"""Validation and normalization of Segment messages, from a client's JSON to what is stored.

Owns the Tracking API's per-message rules (SEGMENT_API.md §1): the call types and
their required fields, id coercion, generated messageIds, skew-corrected
timestamps, batch-level ``context``/``integrations`` merging and ``context.ip``.
Checks are written out rather than run through JSON Schema because they also
coerce (numbers to strings, timestamps) and run on every event of the hot path:
what is the same for every message of a request (receivedAt, a batch's sentAt,
the clock skew) is worked out once, in :class:`Envelope`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much
class Envelope:
    """What the request, not the message, contributes to every message in it."""

    received_at: datetime
    ip: str | None = None
    sent_at: str | None = None  # a batch-level sentAt
    context: dict[str, Any] | None = None  # batch-level context, merged under each item's
    integrations: dict[str, Any] | None = None
    # Worked out once per request from the fields above:
    received_text: str = field(init=False, repr=False, compare=False)
    sent: datetime | InvalidMessage | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.received_text = format_ts(self.received_at)
        self.sent = None
        if self.sent_at is not None:
            try:
                self.sent = parse_ts(self.sent_at, "sentAt")
            except InvalidMessage as exc:  # raised for each message that needs it
                self.sent = exc


def format_ts(dt: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, the way Segment writes timestamps."""
    if dt.utcoffset() != _ZERO:
        dt = dt.astimezone(UTC)
    # %-formatting: strftime or format specs cost 2-3 times as much, on every message
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        dt.microsecond // 1000,
    )


_ZERO = timedelta(0)


def _is_canonical(value: str) -> bool:
    """Already what format_ts writes (``2025-01-15T10:30:00.000Z``, as the SDKs send)?"""
    return (
        len(value) == 24
        and value[23] == "Z"
        and value[19] == "."
        and value[10] == "T"
        and value[4] == "-"
        and value[7] == "-"
        and value[13] == ":"
        and value[16] == ":"
    )


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
    for name in _OBJECT_FIELDS:  # nulls were dropped above
        if name in out and not isinstance(out[name], dict):
            raise InvalidMessage("invalid_field", f"{name} must be an object")

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
    out["receivedAt"] = env.received_text
    client_ts = raw.get("timestamp") or raw.get("originalTimestamp")
    own_sent = raw.get("sentAt")
    sent = parse_ts(own_sent, "sentAt") if own_sent else env.sent
    if isinstance(sent, InvalidMessage):
        raise sent
    if client_ts is None:
        out["timestamp"] = env.received_text
        out.pop("originalTimestamp", None)
        if sent is not None:
            out["sentAt"] = format_ts(sent)
        return
    original = parse_ts(client_ts, "timestamp")  # validates a canonical string kept as is
    canonical = isinstance(client_ts, str) and _is_canonical(client_ts)
    out["originalTimestamp"] = client_ts if canonical else format_ts(original)
    if sent is None:
        out["timestamp"] = out["originalTimestamp"]
        return
    out["sentAt"] = format_ts(sent)
    out["timestamp"] = format_ts(env.received_at - (sent - original))
