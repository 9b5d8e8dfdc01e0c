"""Validation and normalization of Segment messages, from a client's JSON to what is stored.

Owns the Tracking API's per-message rules (SEGMENT_API.md §1): the call types and
their required fields, id coercion, generated messageIds, skew-corrected
timestamps, batch-level ``context``/``integrations`` merging and ``context.ip``.
Checks are written out rather than run through JSON Schema because they also
coerce (numbers to strings, timestamps) and run on every event of the hot path:
what is the same for every message of a request (receivedAt, a batch's sentAt,
the clock skew) is worked out once, in :class:`Envelope`.

Repairs: what Segment tolerates in one part of a message costs neither the message
nor its batch. A lone UTF-16 surrogate (or an invalid UTF-8 byte) becomes U+FFFD
(:func:`scrub_unicode`); an unreadable ``sentAt`` means no skew correction; an
unreadable ``timestamp``/``originalTimestamp`` falls back to ``receivedAt``; a
skew correction out of datetime's range keeps the client's time. Each repair is
listed in the stored event's ``context.repaired`` (``[{"reason", "field", "sent"}]``,
the value as sent kept visible there) and returned to the caller, which counts and
logs it (:mod:`eventd.ingest`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
MAX_MESSAGE_ID = 100
# Fields a client sends that are not part of the stored event.
_DROPPED = ("writeKey", "_metadata")
_OBJECT_FIELDS = ("context", "integrations", "properties", "traits")
# Characters that carry no id: whitespace, controls (NUL), format characters (zero-width
# space, BOM, joiners); an id made only of them is missing, and a messageId is trimmed
# of them (rudder-server's gateway tests send "   " and "\u0000" as messageIds).
_INVISIBLE = "".join(
    chr(c)
    for c in (
        *range(0x00, 0x21),
        *range(0x7F, 0xA1),
        0xAD,
        0x034F,
        0x061C,
        0x115F,
        0x1160,
        0x1680,
        0x17B4,
        0x17B5,
        0x180E,
        *range(0x2000, 0x2010),
        *range(0x2028, 0x2030),
        *range(0x205F, 0x2070),
        0x3000,
        0x3164,
        0xFEFF,
        0xFFA0,
    )
)
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"

# Repair reasons (the ``reason`` label of eventd_repaired_events).
INVALID_UNICODE = "invalid_unicode"
UNREADABLE_TIMESTAMP = "unreadable_timestamp"
UNREADABLE_SENT_AT = "unreadable_sent_at"
SKEW_OUT_OF_RANGE = "skew_out_of_range"


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
    sent_at: Any = None  # a batch-level sentAt, as sent (perhaps not a string)
    context: dict[str, Any] | None = None  # batch-level context, merged under each item's
    integrations: dict[str, Any] | None = None
    # Worked out once per request from the fields above:
    received_text: str = field(init=False, repr=False, compare=False)
    sent: datetime | None = field(init=False, repr=False, compare=False)
    sent_unreadable: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.received_text = format_ts(self.received_at)
        self.sent = _readable(self.sent_at)
        self.sent_unreadable = self.sent_at is not None and self.sent is None


def format_ts(dt: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, the way Segment writes timestamps."""
    if dt.tzinfo is not UTC and dt.utcoffset() != _ZERO:  # the identity test first: cheaper
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
    """An ISO-8601 string as an aware datetime (UTC when it has no offset) whose UTC form
    is in datetime's range; else :class:`InvalidMessage` (``invalid_timestamp``)."""
    if not isinstance(value, str):
        raise InvalidMessage("invalid_timestamp", f"{field} must be an ISO-8601 string")
    try:
        dt = datetime.fromisoformat(value)
        tz = dt.tzinfo
        if tz is UTC:  # "...Z", as the SDKs send: nothing to check
            return dt
        if tz is None:
            return dt.replace(tzinfo=UTC)
        dt.astimezone(UTC)  # 0001-01-01T00:00+01:00 has no UTC form
    except (ValueError, OverflowError):
        raise InvalidMessage(
            "invalid_timestamp", f"{field} is not an ISO-8601 timestamp: {str(value)[:40]!r}"
        ) from None
    return dt


def _readable(value: object) -> datetime | None:
    """``value`` as a timestamp, or None when it is absent or unreadable."""
    if value is None:
        return None
    try:
        return parse_ts(value, "")
    except InvalidMessage:
        return None


def scrub_unicode(value: Any) -> tuple[Any, int]:
    """``value`` (parsed JSON) with every lone surrogate, in keys and strings alike,
    replaced by U+FFFD; and how many were replaced.

    A string cut in the middle of an emoji (``"\\ud83c"``) is valid JSON but not
    Unicode; an invalid UTF-8 byte arrives here as a lone surrogate too (the body is
    decoded with ``surrogateescape``). Neither can be stored or sent on as UTF-8.
    """
    if isinstance(value, str):
        fixed, n = _SURROGATE.subn(REPLACEMENT, value)
        return fixed, n
    if isinstance(value, dict):
        total = 0
        out: dict[str, Any] = {}
        for k, v in value.items():
            k2, n1 = scrub_unicode(k)
            v2, n2 = scrub_unicode(v)
            out[k2] = v2
            total += n1 + n2
        return (out, total) if total else (value, 0)
    if isinstance(value, list):
        total = 0
        items = []
        for v in value:
            v2, n = scrub_unicode(v)
            items.append(v2)
            total += n
        return (items, total) if total else (value, 0)
    return value, 0


def _id(msg: dict[str, Any], field: str) -> str | None:
    """An id as a string: numbers are written exactly (an int of any width keeps every
    digit); an id of only invisible characters is missing."""
    value = msg.get(field)
    if type(value) is str:  # the common case first: no union isinstance
        return value if value.strip(_INVISIBLE) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidMessage("invalid_field", f"{field} must be a string or a number")
    if isinstance(value, str):  # a str subclass (never from JSON, but callers may)
        return value if value.strip(_INVISIBLE) else None
    return str(value)


def _message_id(raw: dict[str, Any]) -> str:
    """The client's messageId trimmed of invisible characters, or a new one when it
    has none (missing, empty or only invisible characters)."""
    message_id = raw.get("messageId")
    if isinstance(message_id, str):
        message_id = message_id.strip(_INVISIBLE)
    if message_id is None or message_id == "":
        return str(uuid.uuid4())
    if not isinstance(message_id, str):
        raise InvalidMessage("invalid_field", "messageId must be a string")
    if len(message_id) > MAX_MESSAGE_ID:
        raise InvalidMessage("invalid_field", f"messageId is longer than {MAX_MESSAGE_ID}")
    return message_id


def normalize(
    raw: object,
    call_type: str | None,
    env: Envelope,
    repairs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the stored form of one message or raise :class:`InvalidMessage`.

    ``call_type`` comes from the path (``/v1/track``); for batch items it is
    None and the item's own ``type`` is used. ``repairs`` (when given) already holds
    what the caller repaired before (invalid Unicode); what is repaired here is
    appended, and a non-empty list is stored as ``context.repaired``.
    """
    if not isinstance(raw, dict):
        raise InvalidMessage("invalid_message", "each message must be a JSON object")
    msg_type = call_type or raw.get("type")
    if not isinstance(msg_type, str) or msg_type not in TYPES:
        raise InvalidMessage(
            "invalid_type", f"type must be one of {', '.join(sorted(TYPES))}, got {msg_type!r}"
        )

    out = _copy_without_nulls(raw)
    out["type"] = msg_type
    for name in _OBJECT_FIELDS:  # nulls were dropped above
        if name in out and not isinstance(out[name], dict):
            raise InvalidMessage("invalid_field", f"{name} must be an object")

    user_id = _id(raw, "userId")
    anonymous_id = _id(raw, "anonymousId")
    if user_id is None:
        if anonymous_id is None:
            raise InvalidMessage("missing_user", "userId or anonymousId is required")
        out.pop("userId", None)
    else:
        out["userId"] = user_id
    if anonymous_id is None:
        out.pop("anonymousId", None)
    else:
        out["anonymousId"] = anonymous_id

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

    out["messageId"] = _message_id(raw)

    if env.context:
        out["context"] = {**env.context, **(out.get("context") or {})}
    if env.integrations:
        out["integrations"] = {**env.integrations, **(out.get("integrations") or {})}
    if env.ip and not (out.get("context") or {}).get("ip"):
        out["context"] = {**(out.get("context") or {}), "ip": env.ip}

    found = repairs if repairs is not None else []
    _timestamps(raw, out, env, found)
    if found:
        out["context"] = {**(out.get("context") or {}), "repaired": found}
    return out


def _copy_without_nulls(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the fields a client sends that are not stored, nor null ones.
    A C-level copy, then deletions: a filtering comprehension cost 3 times as much,
    and most messages have neither."""
    out = raw.copy()
    for name in _DROPPED:
        if name in out:
            del out[name]
    for value in out.values():
        if value is None:
            return {k: v for k, v in out.items() if v is not None}
    return out


def _timestamps(
    raw: dict[str, Any], out: dict[str, Any], env: Envelope, repairs: list[dict[str, Any]]
) -> None:
    """receivedAt is ours; timestamp is corrected for the client clock's skew.

    timestamp = receivedAt - (sentAt - originalTimestamp), where originalTimestamp
    is what the client called the event's time. Without sentAt the client's time
    is kept; without any client time, receivedAt is used. What cannot be read is
    repaired (see the module docstring), never a reason to refuse the message.
    """
    out["receivedAt"] = env.received_text
    out.pop("sentAt", None)
    own_sent = raw.get("sentAt")
    if own_sent:
        sent = _readable(own_sent)
        if sent is None:
            repairs.append({"reason": UNREADABLE_SENT_AT, "field": "sentAt", "sent": own_sent})
    else:
        sent = env.sent
        if env.sent_unreadable:
            repairs.append({"reason": UNREADABLE_SENT_AT, "field": "sentAt", "sent": env.sent_at})
    if sent is not None:
        out["sentAt"] = format_ts(sent)

    # timestamp first (analytics.js writes both), then originalTimestamp (the mobile SDKs)
    client_ts: object = None
    original = None
    for name in ("timestamp", "originalTimestamp"):
        value = raw.get(name)
        if not value:
            continue
        original = _readable(value)
        if original is not None:
            client_ts = value
            break
        repairs.append({"reason": UNREADABLE_TIMESTAMP, "field": name, "sent": value})
    if original is None:
        out["timestamp"] = env.received_text
        out.pop("originalTimestamp", None)
        return
    canonical = isinstance(client_ts, str) and _is_canonical(client_ts)
    out["originalTimestamp"] = client_ts if canonical else format_ts(original)
    out["timestamp"] = out["originalTimestamp"]
    if sent is None:
        return
    try:
        out["timestamp"] = format_ts(env.received_at - (sent - original))
    except OverflowError:
        # receivedAt - (sentAt - timestamp) before year 1 or after 9999: the clocks
        # disagree by millennia, so the client's own time is the better guess.
        repairs.append(
            {
                "reason": SKEW_OUT_OF_RANGE,
                "field": "sentAt",
                "sent": raw.get("sentAt") or env.sent_at,
            }
        )
