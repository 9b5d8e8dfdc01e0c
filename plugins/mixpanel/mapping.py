"""Segment calls as Mixpanel API items: pure functions, no I/O.

One Segment call becomes at most one item per Mixpanel endpoint:

    track ............ /import  event
    page, screen ..... /import  "Viewed {name} Page" (``page_event_name``)
    identify ......... /engage  $set of the traits (Mixpanel's reserved names for
                       Segment's special traits) and, when the call has both ids,
                       /import  $identify linking anonymousId to userId
    group ............ /engage  $union of the group into the user's ``group_key``
                       and /groups $set of the group's traits (needs ``group_key``)
    alias ............ /import  $create_alias or $merge (``alias_event``)

Calls with nothing to send become ``Skip(reason)``; the reasons are constants
because eventd counts skips by reason in a metric label.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from eventd import Skip

from ..segment_message import (
    DEFAULT_PAGE_TEMPLATE,
    compact,
    lookup,
    number,
    obj,
    page_event_name,
    parse_user_agent,
    text,
    time_ms,
)

IMPORT, ENGAGE, GROUPS = "import", "engage", "groups"
ENDPOINTS = (IMPORT, ENGAGE, GROUPS)
Mapped = dict[str, dict[str, Any]]  # endpoint -> the call's item for it

SKIP_IDENTIFY = Skip("identify without traits or anonymousId: nothing to set or link")
SKIP_GROUP = Skip("group: group_key is not set")
SKIP_ALIAS = Skip("alias: alias_event is none")
SKIP_TYPE = Skip("call type not supported by mixpanel")

# Mixpanel deduplicates on $insert_id, which must be 1-36 letters, digits or dashes.
_INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
_INSERT_ID_NAMESPACE = uuid.UUID("9a0c3a1e-4d1b-4b7e-9c55-6f1d2e3a4b5c")

# Segment's special traits and the reserved profile properties Mixpanel shows them as.
PROFILE_TRAITS = {
    "email": "$email",
    "firstName": "$first_name",
    "lastName": "$last_name",
    "name": "$name",
    "username": "$username",
    "phone": "$phone",
    "avatar": "$avatar",
    "createdAt": "$created",
    "created": "$created",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """The settings the mapping reads."""

    project_token: str
    page_event_name: str = DEFAULT_PAGE_TEMPLATE
    group_key: str | None = None
    alias_event: str = "$create_alias"  # or "$merge", or "none"


def insert_id(message_id: str) -> str:
    """The messageId when Mixpanel accepts it as $insert_id, else a stable UUID of it
    (the browser's "ajs-next-<32 hex>" ids are 41 characters), so a resend dedups."""
    if _INSERT_ID.match(message_id):
        return message_id
    return str(uuid.uuid5(_INSERT_ID_NAMESPACE, message_id))


def map_message(message: dict[str, Any], received_ms: int, options: Options) -> Mapped | Skip:
    """The Mixpanel items for one stored Segment message."""
    kind = message.get("type")
    if kind == "track":
        return {IMPORT: _event(str(message.get("event")), message, received_ms, options)}
    if kind in ("page", "screen"):
        name = page_event_name(options.page_event_name, message)
        return {IMPORT: _event(name, message, received_ms, options)}
    if kind == "identify":
        return _identify(message, received_ms, options)
    if kind == "group":
        return _group(message, options)
    if kind == "alias":
        return _alias(message, received_ms, options)
    return SKIP_TYPE


def _ids(message: dict[str, Any], received_ms: int) -> dict[str, Any]:
    """Who and when: distinct_id (userId else anonymousId), time (ms), $insert_id, and
    $user_id/$device_id, which Simplified ID Merge links on."""
    user_id = text(message.get("userId"))
    anonymous_id = text(message.get("anonymousId"))
    return compact(
        {
            "time": time_ms(message, received_ms),
            "distinct_id": user_id or anonymous_id or "",
            "$insert_id": insert_id(str(message.get("messageId", ""))),
            "$user_id": user_id,
            "$device_id": anonymous_id,
        }
    )


def context_properties(message: dict[str, Any]) -> dict[str, Any]:
    """Mixpanel's default properties from the Segment ``context`` (as Segment maps them)."""
    ctx = obj(message.get("context"))
    ua = parse_user_agent(text(ctx.get("userAgent")))
    library = text(lookup(ctx, "library", "name"))
    return compact(
        {
            "ip": text(ctx.get("ip")),
            "$current_url": text(lookup(ctx, "page", "url")),
            "$referrer": text(lookup(ctx, "page", "referrer")),
            "$os": text(lookup(ctx, "os", "name")) or ua.os,
            "$os_version": text(lookup(ctx, "os", "version")),
            "$browser": ua.browser,
            "$browser_version": ua.browser_version,
            "$device": text(lookup(ctx, "device", "name")) or ua.device,
            "$manufacturer": text(lookup(ctx, "device", "manufacturer")),
            "$model": text(lookup(ctx, "device", "model")),
            "$screen_height": number(lookup(ctx, "screen", "height")),
            "$screen_width": number(lookup(ctx, "screen", "width")),
            "$screen_density": number(lookup(ctx, "screen", "density")),
            "$app_name": text(lookup(ctx, "app", "name")),
            "$app_namespace": text(lookup(ctx, "app", "namespace")),
            "$app_version_string": text(lookup(ctx, "app", "version")),
            "$app_build_number": text(lookup(ctx, "app", "build")),
            "$carrier": text(lookup(ctx, "network", "carrier")),
            "$wifi_enabled": _flag(lookup(ctx, "network", "wifi")),
            "$bluetooth_enabled": _flag(lookup(ctx, "network", "bluetooth")),
            "$cellular_enabled": _flag(lookup(ctx, "network", "cellular")),
            "$locale": text(ctx.get("locale")),
            "$city": text(lookup(ctx, "location", "city")),
            "$region": text(lookup(ctx, "location", "region")),
            "mp_country_code": text(lookup(ctx, "location", "country")),
            "utm_source": text(lookup(ctx, "campaign", "source")),
            "utm_medium": text(lookup(ctx, "campaign", "medium")),
            "utm_campaign": text(lookup(ctx, "campaign", "name")),
            "utm_term": text(lookup(ctx, "campaign", "term")),
            "utm_content": text(lookup(ctx, "campaign", "content")),
            "$lib_version": text(lookup(ctx, "library", "version")),
            "mp_lib": f"eventd: {library}" if library else "eventd",
            "$source": "eventd",
        }
    )


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _event(
    name: str, message: dict[str, Any], received_ms: int, options: Options
) -> dict[str, Any]:
    """An /import event: context, then the call's properties, then the ids (which the
    call's properties must not override: they are what dedup and identity rest on)."""
    properties = context_properties(message)
    if message.get("type") in ("page", "screen"):
        properties.update(
            compact({"name": text(message.get("name")), "category": text(message.get("category"))})
        )
    properties.update(obj(message.get("properties")))
    group_id = text(lookup(message, "context", "groupId"))
    if options.group_key and group_id:
        # Mixpanel's Group Analytics attributes an event to a group by this property.
        properties.setdefault(options.group_key, group_id)
    properties.update(_ids(message, received_ms))
    return {"event": name, "properties": properties}


def profile_traits(traits: dict[str, Any]) -> dict[str, Any]:
    """Traits for a profile $set, Segment's special traits under Mixpanel's names."""
    out = {k: v for k, v in traits.items() if k not in PROFILE_TRAITS}
    for segment_name, mixpanel_name in PROFILE_TRAITS.items():
        if traits.get(segment_name) is not None:
            out[mixpanel_name] = traits[segment_name]
    if "$name" not in out:
        first, last = text(traits.get("firstName")), text(traits.get("lastName"))
        if first and last:
            out["$name"] = f"{first} {last}"
    return out


def _identify(message: dict[str, Any], received_ms: int, options: Options) -> Mapped | Skip:
    user_id = text(message.get("userId"))
    anonymous_id = text(message.get("anonymousId"))
    traits = obj(message.get("traits"))
    mapped: Mapped = {}
    if traits:
        mapped[ENGAGE] = compact(
            {
                "$token": options.project_token,
                "$distinct_id": user_id or anonymous_id,
                "$ip": text(lookup(message, "context", "ip")),
                "$set": profile_traits(traits),
            }
        )
    if user_id and anonymous_id:
        # Original ID Merge links on $identify's $anon_id/$identified_id; Simplified ID
        # Merge on any event carrying both $device_id and $user_id: this one has both.
        properties = _ids(message, received_ms)
        properties.update({"$identified_id": user_id, "$anon_id": anonymous_id})
        mapped[IMPORT] = {"event": "$identify", "properties": properties}
    return mapped or SKIP_IDENTIFY


def _group(message: dict[str, Any], options: Options) -> Mapped | Skip:
    if not options.group_key:
        return SKIP_GROUP
    group_id = str(message.get("groupId"))
    distinct_id = text(message.get("userId")) or text(message.get("anonymousId"))
    mapped: Mapped = {
        ENGAGE: {
            "$token": options.project_token,
            "$distinct_id": distinct_id,
            "$union": {options.group_key: [group_id]},
        }
    }
    traits = obj(message.get("traits"))
    if traits:
        mapped[GROUPS] = {
            "$token": options.project_token,
            "$group_key": options.group_key,
            "$group_id": group_id,
            "$set": traits,
        }
    return mapped


def _alias(message: dict[str, Any], received_ms: int, options: Options) -> Mapped | Skip:
    if options.alias_event == "none":
        return SKIP_ALIAS
    previous_id = str(message.get("previousId"))
    user_id = str(message.get("userId"))
    ids = _ids(message, received_ms)
    stamp = {"time": ids["time"], "$insert_id": ids["$insert_id"]}
    if options.alias_event == "$merge":
        properties = {"$distinct_ids": [previous_id, user_id], **stamp}
    else:
        properties = {"distinct_id": previous_id, "alias": user_id, **stamp}
    return {IMPORT: {"event": options.alias_event, "properties": properties}}
