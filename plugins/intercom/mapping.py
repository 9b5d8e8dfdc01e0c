"""Segment messages as Intercom request bodies: contacts, data events and companies.

Owns the field mapping, the way Segment's Intercom destination does it:
identify -> a contact (role ``user``, ``external_id`` = userId, email, name,
phone, avatar, ``signed_up_at`` from ``createdAt``, the other flat traits as
custom attributes); track -> a data event (``event_name``, ``created_at`` in
seconds, ``user_id`` or ``email``, flat ``metadata`` of at most 10 keys, revenue
as a ``price`` amount in cents); group -> a company keyed by ``company_id`` =
groupId. A message Intercom cannot place (no userId and no email) is a Skip.

Pure functions: no I/O, so every rule is unit-tested directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from eventd import Skip

MAX_METADATA_KEYS = 10
MAX_STRING = 255  # Intercom's limit for metadata and custom attribute strings
# Intercom's attribute and metadata names cannot hold '.' or '$'.
_BAD_KEY_CHARS = re.compile(r"[.$]")

# Traits that map to a contact's own fields (or that are objects Intercom
# has no flat place for); every other flat trait is a custom attribute.
_CONTACT_TRAITS = frozenset(
    {
        "email",
        "phone",
        "name",
        "firstName",
        "lastName",
        "first_name",
        "last_name",
        "avatar",
        "createdAt",
        "created_at",
        "id",
        "userId",
        "user_id",
        "company",
        "address",
    }
)
_COMPANY_TRAITS = frozenset(
    {
        "name",
        "plan",
        "monthly_spend",
        "employees",
        "size",
        "website",
        "industry",
        "createdAt",
        "created_at",
        "id",
        "company_id",
    }
)
# Metadata objects Intercom understands: a rich link and a monetary amount.
_RICH_SHAPES = ({"url", "value"}, {"amount", "currency"})
# Properties that become the event's identity or its price, not metadata.
_EVENT_PROPS = frozenset({"email", "revenue", "currency"})


def contact_body(message: Mapping[str, Any]) -> dict[str, Any] | Skip:
    """POST /contacts (and PUT /contacts/{id}) body for an identify."""
    traits = _object(message.get("traits"))
    user_id = _string(message.get("userId"))
    email = _string(traits.get("email"))
    if user_id is None and email is None:
        return Skip("anonymous identify: Intercom needs a userId or traits.email")
    body: dict[str, Any] = {"role": "user"}
    if user_id is not None:
        body["external_id"] = user_id
    if email is not None:
        body["email"] = email
    name = _string(traits.get("name")) or _full_name(traits)
    for key, value in (
        ("phone", _string(traits.get("phone"))),
        ("name", name),
        ("avatar", _string(traits.get("avatar"))),
        ("signed_up_at", epoch_seconds(traits.get("createdAt", traits.get("created_at")))),
        ("last_seen_at", epoch_seconds(message.get("timestamp"))),
    ):
        if value is not None:
            body[key] = value
    custom = _flat({k: v for k, v in traits.items() if k not in _CONTACT_TRAITS})
    if custom:
        body["custom_attributes"] = custom
    return body


def event_body(message: Mapping[str, Any]) -> dict[str, Any] | Skip:
    """POST /events body for a track."""
    props = _object(message.get("properties"))
    context = _object(message.get("context"))
    user_id = _string(message.get("userId"))
    email = _string(props.get("email")) or _string(_object(context.get("traits")).get("email"))
    if user_id is None and email is None:
        return Skip("anonymous track: Intercom needs a userId or an email")
    created_at = epoch_seconds(message.get("timestamp")) or epoch_seconds(message.get("receivedAt"))
    body: dict[str, Any] = {"event_name": str(message.get("event", "")), "created_at": created_at}
    if user_id is not None:
        body["user_id"] = user_id
    else:
        body["email"] = email
    metadata = event_metadata(props)
    if metadata:
        body["metadata"] = metadata
    return body


def event_metadata(props: Mapping[str, Any]) -> dict[str, Any]:
    """Flat metadata of at most 10 keys: ``price`` (from revenue) first, then by key name.

    Intercom keeps only ten keys and ignores the rest in an order of its own;
    choosing here makes which ones survive depend only on the event.
    """
    out: dict[str, Any] = {}
    revenue = props.get("revenue")
    if isinstance(revenue, int | float) and not isinstance(revenue, bool):
        currency = props.get("currency")
        out["price"] = {
            "amount": round(revenue * 100),  # Intercom amounts are in cents
            "currency": currency if isinstance(currency, str) and currency else "usd",
        }
    rest = _flat(
        {k: v for k, v in props.items() if k not in _EVENT_PROPS}, rich=True, reserved=set(out)
    )
    for key in sorted(rest)[: MAX_METADATA_KEYS - len(out)]:
        out[key] = rest[key]
    return out


def company_body(message: Mapping[str, Any]) -> dict[str, Any]:
    """POST /companies body (create or update by company_id) for a group."""
    traits = _object(message.get("traits"))
    body: dict[str, Any] = {"company_id": str(message.get("groupId", ""))}
    size = traits.get("employees", traits.get("size"))
    spend = traits.get("monthly_spend")
    for key, value in (
        ("name", _string(traits.get("name"))),
        ("plan", _string(traits.get("plan"))),
        ("website", _string(traits.get("website"))),
        ("industry", _string(traits.get("industry"))),
        ("size", int(size) if _is_number(size) else None),
        ("monthly_spend", spend if _is_number(spend) else None),
        ("remote_created_at", epoch_seconds(traits.get("createdAt", traits.get("created_at")))),
    ):
        if value is not None:
            body[key] = value
    custom = _flat({k: v for k, v in traits.items() if k not in _COMPANY_TRAITS})
    if custom:
        body["custom_attributes"] = custom
    return body


def epoch_seconds(value: Any) -> int | None:
    """Unix seconds from an ISO-8601 string or a number (seconds; milliseconds if huge)."""
    if _is_number(value):
        number = float(value)
        # A number this large is milliseconds (JavaScript's Date.now()), not a year past 5000.
        return int(number / 1000) if number > 100_000_000_000 else int(number)
    if isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
    return None


# -- helpers ------------------------------------------------------------------------------


def _flat(
    values: Mapping[str, Any], *, rich: bool = False, reserved: set[str] | None = None
) -> dict[str, Any]:
    """Values Intercom stores as attributes or metadata: strings (cut to 255), numbers,
    booleans; with ``rich``, also its rich link ``{url, value}`` and monetary
    ``{amount, currency}`` objects. Nulls, arrays and other objects are left out:
    Intercom has no nested structure."""
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _BAD_KEY_CHARS.sub("_", raw_key)
        if not key or key in out or key in (reserved or ()):
            continue
        if isinstance(value, str):
            out[key] = value[:MAX_STRING]
        elif isinstance(value, bool | int | float):
            out[key] = value
        elif rich and isinstance(value, Mapping) and set(value) in _RICH_SHAPES:
            out[key] = dict(value)
    return out


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _string(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if _is_number(value):
        return str(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _full_name(traits: Mapping[str, Any]) -> str | None:
    parts = [
        _string(traits.get(k)) or _string(traits.get(alt))
        for k, alt in (("firstName", "first_name"), ("lastName", "last_name"))
    ]
    joined = " ".join(p for p in parts if p)
    return joined or None
