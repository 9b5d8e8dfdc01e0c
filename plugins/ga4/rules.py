"""GA4 Measurement Protocol rules, and the sanitiser that brings names and params within them.

Owns the limits Google documents for ``/mp/collect`` (name syntax and length,
reserved names and prefixes, value lengths, counts per event and per request)
and turns arbitrary Segment properties into GA4 params that obey them. GA4
answers 2xx to bad data and drops it silently, so everything is fixed (or
refused) here, before sending.

Every change made to an event is reported as one of the ``ADJUSTED_*`` reasons:
a small fixed set, fit for a metric label, never a value taken from the event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..segment_message import number

# -- limits (developers.google.com/analytics/devguides/collection/protocol/ga4) ----------

MAX_EVENTS_PER_REQUEST = 25
MAX_BODY_BYTES = 130_000  # "the post body must be smaller than 130kB"
MAX_PARAMS = 25
MAX_NAME = 40
MAX_VALUE = 100
# A few page params have longer limits than the default 100 characters.
VALUE_LIMITS = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
MAX_ITEMS = 200
MAX_USER_ID = 256
BACKDATE_LIMIT_SECONDS = 72 * 3600  # events can be backdated up to 72 hours

RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag.")
# Reserved event names (Measurement Protocol reference and the Firebase list it
# follows). page_view is not among them: the Measurement Protocol accepts it.
RESERVED_EVENT_NAMES = frozenset(
    {
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "ad_reward",
        "adunit_exposure",
        "app_background",
        "app_clear_data",
        "app_exception",
        "app_install",
        "app_remove",
        "app_store_refund",
        "app_store_subscription_cancel",
        "app_store_subscription_convert",
        "app_store_subscription_renew",
        "app_update",
        "app_upgrade",
        "dynamic_link_app_open",
        "dynamic_link_app_update",
        "dynamic_link_first_open",
        "error",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "notification_send",
        "os_update",
        "screen_view",
        "session_start",
        "session_start_with_rollout",
        "user_engagement",
    }
)
RESERVED_PARAM_NAMES = frozenset({"firebase_conversion"})
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
CURRENCY_RE = re.compile(r"^[A-Za-z]{3}$")
# Prepended to a name that is reserved or does not start with a letter.
RENAME_PREFIX = "x_"

# -- what a change is counted as --------------------------------------------------------

ADJUSTED_NAME = (
    "name_changed"  # event or param name rewritten to GA4's syntax or away from a reserved one
)
ADJUSTED_TRUNCATED = "value_truncated"  # a string longer than its limit was cut
ADJUSTED_DROPPED = "param_dropped"  # null, nested or unusable value, or a name clash
ADJUSTED_OVER_LIMIT = "params_over_limit"  # more than 25 params (or 200 items): the rest dropped
ADJUSTED_NO_CURRENCY = "value_without_currency"  # a value GA4 cannot use without a currency
ADJUSTED_USER_ID = "user_id_dropped"  # a user_id longer than GA4 accepts

Scalar = str | int | float


def ga4_name(raw: str, adjust: set[str], *, event: bool) -> str | None:
    """``raw`` as a GA4 name, or None when nothing usable is left.

    Runs of characters outside ``[A-Za-z0-9_]`` become one ``_`` (so "Order Shipped"
    is ``Order_Shipped``, as Segment's own GA4 destination names it: that much is
    the mapping, not counted as a change); leading underscores go; a name that
    does not start with a letter or is reserved gets the ``x_`` prefix; the result
    is cut to 40 characters.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", raw.strip()).strip("_")
    if not cleaned:
        adjust.add(ADJUSTED_NAME)
        return None
    lowered = cleaned.lower()
    reserved = lowered.startswith(RESERVED_PREFIXES) or (
        lowered in (RESERVED_EVENT_NAMES if event else RESERVED_PARAM_NAMES)
    )
    if reserved or not cleaned[0].isascii() or not cleaned[0].isalpha():
        cleaned = RENAME_PREFIX + cleaned
    cleaned = cleaned[:MAX_NAME]
    if cleaned != raw.strip().replace(" ", "_"):
        adjust.add(ADJUSTED_NAME)
    return cleaned


def scalar(value: Any, limit: int, adjust: set[str]) -> Scalar | None:
    """A param value GA4 takes (string or number), or None (counted) when there is none."""
    if isinstance(value, bool):
        # Booleans are not a GA4 param type; their text keeps the meaning.
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        if len(value) > limit:
            adjust.add(ADJUSTED_TRUNCATED)
            return value[:limit]
        return value
    adjust.add(ADJUSTED_DROPPED)  # null, object or array: GA4 drops events carrying them
    return None


def currency(value: Any) -> str | None:
    """An ISO 4217 code in GA4's form (upper case), or None."""
    if isinstance(value, str) and CURRENCY_RE.match(value):
        return value.upper()
    return None


def _typed(name: str, value: Any, adjust: set[str]) -> Scalar | None:
    """A param value; the params GA4 gives a meaning to must have its type."""
    if name in ("currency", "value", "items"):
        # On any event, not only the mapped ecommerce ones: GA4 checks them by name.
        # `items` reaches here only from a custom property, never as GA4 item objects.
        typed: Scalar | None = None
        if name == "currency":
            typed = currency(value)
        elif name == "value":
            typed = number(value)
        if typed is None:
            adjust.add(ADJUSTED_DROPPED)
        return typed
    return scalar(value, VALUE_LIMITS.get(name, MAX_VALUE), adjust)


def build_params(
    pairs: Iterable[tuple[str, Any]], adjust: set[str], *, items: list[dict[str, Scalar]] | None
) -> dict[str, Any]:
    """GA4 params from (name, value) pairs taken in priority order.

    The first 25 usable params are kept (``items`` counts as one); later ones are
    dropped and counted, so which params survive depends only on the input.
    """
    out: dict[str, Any] = {}
    if items is not None:
        out["items"] = items
    over = False
    for raw_name, raw_value in pairs:
        name = ga4_name(raw_name, adjust, event=False)
        if name is None:
            adjust.add(ADJUSTED_DROPPED)
            continue
        if name in out:
            adjust.add(ADJUSTED_DROPPED)  # two properties that sanitise to the same name
            continue
        value = _typed(name, raw_value, adjust)
        if value is None:
            continue
        if len(out) >= MAX_PARAMS:
            over = True
            continue
        out[name] = value
    if over:
        adjust.add(ADJUSTED_OVER_LIMIT)
    return out
