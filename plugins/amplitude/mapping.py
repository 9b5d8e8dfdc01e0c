"""Segment calls as Amplitude events (HTTP V2 / Batch API format): pure functions, no I/O.

    track ............ the event; revenue fields from its properties
    page, screen ..... "Viewed {name} Page" (``page_event_name``)
    identify ......... "$identify" with user_properties {"$set": traits}
    group ............ "$identify" putting the user in the group, and when the call
                       has traits "$groupidentify" with group_properties {"$set": traits}
                       (needs ``group_type``; Amplitude's Accounts add-on)
    alias ............ skipped: the HTTP API has no way to alias users

Every event carries user_id, device_id (context.device.id, else anonymousId),
time in ms, insert_id (messageId, which Amplitude dedups for 7 days) and the
device, OS, location and app fields Amplitude has columns for. Skip reasons are
constants because eventd counts skips by reason in a metric label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventd import Skip

from ..segment_message import (
    DEFAULT_PAGE_TEMPLATE,
    compact,
    epoch_ms,
    lookup,
    number,
    obj,
    page_event_name,
    parse_user_agent,
    text,
    time_ms,
)

SKIP_GROUP = Skip("group: group_type is not set")
SKIP_ALIAS = Skip("alias: not supported by Amplitude's HTTP API")
SKIP_TYPE = Skip("call type not supported by amplitude")

# Where Segment's libraries put Amplitude's session id (the session's start, epoch ms).
_SESSION_KEYS = ("Amplitude", "Actions Amplitude")
_WEB_LIBRARIES = ("analytics.js", "analytics-next")


@dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """The settings the mapping reads."""

    page_event_name: str = DEFAULT_PAGE_TEMPLATE
    group_type: str | None = None


def map_message(
    message: dict[str, Any], received_ms: int, options: Options
) -> list[dict[str, Any]] | Skip:
    """The Amplitude events for one stored Segment message."""
    kind = message.get("type")
    if kind == "track":
        event = _base(message, received_ms, options)
        name = str(message.get("event"))
        properties = obj(message.get("properties"))
        event.update(event_type=name, event_properties=properties, **revenue(name, properties))
        return [event]
    if kind in ("page", "screen"):
        event = _base(message, received_ms, options)
        properties = compact(
            {"name": text(message.get("name")), "category": text(message.get("category"))}
        )
        properties.update(obj(message.get("properties")))
        event.update(
            event_type=page_event_name(options.page_event_name, message),
            event_properties=properties,
        )
        return [event]
    if kind == "identify":
        event = _base(message, received_ms, options)
        event.update(event_type="$identify", user_properties={"$set": obj(message.get("traits"))})
        return [event]
    if kind == "group":
        return _group(message, received_ms, options)
    if kind == "alias":
        return SKIP_ALIAS
    return SKIP_TYPE


def _base(message: dict[str, Any], received_ms: int, options: Options) -> dict[str, Any]:
    """The fields every event carries: ids, time, device, OS, location, app, session."""
    ctx = obj(message.get("context"))
    ua = parse_user_agent(text(ctx.get("userAgent")))
    os_name = text(lookup(ctx, "os", "name"))
    platform = text(lookup(ctx, "device", "type"))
    library = text(lookup(ctx, "library", "name")) or ""
    if platform is None and (library.startswith(_WEB_LIBRARIES) or ua.browser):
        platform = "Web"
    advertising_id = text(lookup(ctx, "device", "advertisingId"))
    event = compact(
        {
            "user_id": text(message.get("userId")),
            "device_id": text(lookup(ctx, "device", "id")) or text(message.get("anonymousId")),
            "time": time_ms(message, received_ms),
            "insert_id": str(message.get("messageId", "")),
            "session_id": _session_id(message),
            "platform": platform,
            # On the web Amplitude's own SDK reports the browser as the "OS".
            "os_name": os_name or ua.browser,
            "os_version": text(lookup(ctx, "os", "version"))
            or (ua.browser_version.split(".")[0] if ua.browser_version else None),
            "device_brand": text(lookup(ctx, "device", "brand")),
            "device_manufacturer": text(lookup(ctx, "device", "manufacturer")),
            "device_model": text(lookup(ctx, "device", "model")) or ua.device,
            "carrier": text(lookup(ctx, "network", "carrier")),
            "country": text(lookup(ctx, "location", "country")),
            "region": text(lookup(ctx, "location", "region")),
            "city": text(lookup(ctx, "location", "city")),
            "location_lat": number(lookup(ctx, "location", "latitude")),
            "location_lng": number(lookup(ctx, "location", "longitude")),
            "language": text(ctx.get("locale")),
            "ip": text(ctx.get("ip")),
            "app_version": text(lookup(ctx, "app", "version")),
            "idfa": advertising_id if (os_name or ua.os) == "iOS" else None,
            "adid": advertising_id if (os_name or ua.os) == "Android" else None,
            "library": f"eventd/{library}" if library else "eventd",
        }
    )
    group_id = text(ctx.get("groupId"))
    if options.group_type and group_id:
        event["groups"] = {options.group_type: group_id}
    return event


def _session_id(message: dict[str, Any]) -> int | None:
    for key in _SESSION_KEYS:
        session = epoch_ms(lookup(message, "integrations", key, "session_id"))
        if session is not None:
            return session
    return None


def revenue(event: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Amplitude's revenue fields from a track's properties (Segment's e-commerce spec):
    ``revenue`` (for "Order Completed" without one, ``total``), ``price``, ``quantity``,
    ``productId``, ``revenueType``. Empty when the event carries no amount."""
    amount = number(properties.get("revenue"))
    if amount is None and event == "Order Completed":
        amount = number(properties.get("total"))
    price = number(properties.get("price"))
    if amount is None and price is None:
        return {}
    quantity = number(properties.get("quantity"))
    return compact(
        {
            "revenue": amount,
            "price": price,
            # Amplitude's quantity is an integer; a fractional one would fail the event.
            "quantity": int(quantity)
            if quantity is not None and quantity == int(quantity)
            else None,
            "productId": text(properties.get("productId")) or text(properties.get("product_id")),
            "revenueType": text(properties.get("revenueType"))
            or text(properties.get("revenue_type")),
        }
    )


def _group(
    message: dict[str, Any], received_ms: int, options: Options
) -> list[dict[str, Any]] | Skip:
    if not options.group_type:
        return SKIP_GROUP
    group_id = str(message.get("groupId"))
    groups = {options.group_type: group_id}
    membership = _base(message, received_ms, options)
    membership.update(
        event_type="$identify",
        groups=groups,
        user_properties={"$set": {options.group_type: group_id}},
    )
    events = [membership]
    traits = obj(message.get("traits"))
    if traits:
        properties = _base(message, received_ms, options)
        properties.update(
            event_type="$groupidentify",
            # Its own insert_id: Amplitude would drop it as a duplicate of the first.
            insert_id=f"{membership['insert_id']}-group",
            groups=groups,
            group_properties={"$set": traits},
        )
        events.append(properties)
    return events
