"""Segment messages as GA4 Measurement Protocol events, the way Segment's GA4 destination maps them.

Owns the choice of ``client_id`` and ``user_id``, the Segment ecommerce spec to
GA4 recommended events table, ``page`` to ``page_view``, and the checks GA4
would otherwise fail silently (an order without its id, money without a
currency, a product with neither id nor name, an event older than GA4 accepts).
Call types GA4 has no use for are a :class:`Skip` with the reason.

Pure functions: no I/O, so every rule is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventd import Permanent, Skip

from ..segment_message import number
from .rules import (
    ADJUSTED_NO_CURRENCY,
    ADJUSTED_OVER_LIMIT,
    ADJUSTED_USER_ID,
    BACKDATE_LIMIT_SECONDS,
    MAX_ITEMS,
    MAX_USER_ID,
    MAX_VALUE,
    Scalar,
    build_params,
    currency,
    ga4_name,
    scalar,
)

# Every GA4 event gets engagement_time_msec: GA4 counts only users engaged for a
# non-zero time, and Segment's GA4 destination sends 1 by default for that reason.
DEFAULT_ENGAGEMENT_MSEC = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Ga4Event:
    """One event ready for a request body; requests group events by (client_id, user_id)."""

    client_id: str
    user_id: str | None
    event: dict[str, Any]  # {"name", "params", "timestamp_micros"?}
    adjustments: frozenset[str] = frozenset()


class _Refused(Exception):
    """The message cannot become a valid GA4 event; the text says why (a Permanent reason)."""


# -- the ecommerce table ----------------------------------------------------------------

SINGLE = "single"  # the product is the event's own properties (Product Added, ...)
PRODUCTS = "products"  # properties.products, an array (Order Completed, ...)


@dataclass(frozen=True, slots=True)
class Recommended:
    """How one Segment spec event becomes a GA4 recommended event."""

    name: str
    # GA4 param -> Segment property names, first present wins (strings)
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # GA4 param -> Segment property names (numbers)
    numbers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    items: str | None = None
    value: tuple[str, ...] = ()  # where `value` comes from; SINGLE also tries price x quantity
    order: bool = False  # purchase/refund: transaction_id required, money needs a currency
    items_required: bool = False


_PROMOTION = {
    "promotion_id": ("promotion_id",),
    "promotion_name": ("name",),
    "creative_name": ("creative",),
    "creative_slot": ("position",),
}
_ORDER = {
    "transaction_id": ("order_id",),
    "affiliation": ("affiliation",),
    "coupon": ("coupon",),
}
_ORDER_NUMBERS = {"shipping": ("shipping",), "tax": ("tax",)}
_ORDER_VALUE = ("total", "revenue", "value")
_CART_VALUE = ("value", "revenue", "total")

# Segment ecommerce (v2) and B2B spec events -> GA4 recommended events.
RECOMMENDED: dict[str, Recommended] = {
    "Order Completed": Recommended(
        "purchase",
        _ORDER,
        _ORDER_NUMBERS,
        PRODUCTS,
        _ORDER_VALUE,
        order=True,
        items_required=True,
    ),
    "Order Refunded": Recommended(
        "refund", _ORDER, _ORDER_NUMBERS, PRODUCTS, _ORDER_VALUE, order=True
    ),
    "Product Added": Recommended("add_to_cart", items=SINGLE, value=("value",)),
    "Product Removed": Recommended("remove_from_cart", items=SINGLE, value=("value",)),
    "Product Viewed": Recommended("view_item", items=SINGLE, value=("value",)),
    "Product Clicked": Recommended("select_item", items=SINGLE),
    "Product Added to Wishlist": Recommended("add_to_wishlist", items=SINGLE, value=("value",)),
    "Product List Viewed": Recommended(
        "view_item_list",
        {"item_list_id": ("list_id",), "item_list_name": ("category",)},
        items=PRODUCTS,
    ),
    "Cart Viewed": Recommended("view_cart", items=PRODUCTS, value=_CART_VALUE),
    "Checkout Started": Recommended(
        "begin_checkout", {"coupon": ("coupon",)}, items=PRODUCTS, value=_CART_VALUE
    ),
    "Payment Info Entered": Recommended(
        "add_payment_info",
        {"payment_type": ("payment_method",), "coupon": ("coupon",)},
        items=PRODUCTS,
        value=_CART_VALUE,
    ),
    "Products Searched": Recommended("search", {"search_term": ("query",)}),
    "Promotion Viewed": Recommended("view_promotion", _PROMOTION),
    "Promotion Clicked": Recommended("select_promotion", _PROMOTION),
    "Signed Up": Recommended("sign_up", {"method": ("method", "type")}),
    "Signed In": Recommended("login", {"method": ("method",)}),
}

# GA4 events whose value needs a currency, and the ones that need a transaction_id.
ECOMMERCE_EVENTS = frozenset(
    {spec.name for spec in RECOMMENDED.values() if spec.items} | {"add_shipping_info"}
)
ORDER_EVENTS = frozenset({"purchase", "refund"})

# Segment product fields -> GA4 item params.
_ITEM_FIELDS = {
    "item_id": ("product_id", "sku"),
    "item_name": ("name",),
    "affiliation": ("affiliation",),
    "coupon": ("coupon",),
    "item_brand": ("brand",),
    "item_category": ("category",),
    "item_variant": ("variant",),
}
_ITEM_NUMBERS = {"price": ("price",), "quantity": ("quantity",), "index": ("position",)}
_ITEM_KEYS = frozenset(
    k for keys in (*_ITEM_FIELDS.values(), *_ITEM_NUMBERS.values()) for k in keys
)
# Page fields that become page_location / page_title / page_referrer (path and
# search are inside the URL already).
_PAGE_KEYS = frozenset({"url", "title", "referrer", "path", "search"})

SKIPPED_TYPES = {
    "identify": "identify calls are not supported by GA4",
    "group": "group calls are not supported by GA4",
    "alias": "alias calls are not supported by GA4",
    # A web measurement_id takes web events; app screens go through Firebase.
    "screen": "screen calls are not supported by GA4 web streams",
}


# -- entry point ------------------------------------------------------------------------


def map_message(
    message: Mapping[str, Any], *, client_id_from: str | None, now: float
) -> Ga4Event | Skip | Permanent:
    """One stored Segment message as a GA4 event, a Skip, or a Permanent refusal."""
    kind = message.get("type")
    if kind in SKIPPED_TYPES:
        return Skip(SKIPPED_TYPES[str(kind)])
    if kind not in ("track", "page"):
        return Skip(f"{kind} calls are not supported by GA4")
    adjust: set[str] = set()
    try:
        client_id = _client_id(message, client_id_from)
        user_id = _user_id(message, adjust)
        if kind == "page":
            name, params = "page_view", _page_params(message, adjust)
        else:
            name, params = _track(message, adjust)
        event: dict[str, Any] = {"name": name, "params": params}
        micros = _timestamp_micros(message, now)
        if micros is not None:
            event["timestamp_micros"] = micros
    except _Refused as exc:
        return Permanent(str(exc))
    return Ga4Event(client_id, user_id, event, frozenset(adjust))


# -- identity ---------------------------------------------------------------------------


def lookup(message: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path. A path starting with a top-level field (``properties.``,
    ``traits.``, ``context.``) is read from the message; a bare path is looked for in
    ``properties``, then ``traits``, then ``context.traits``."""
    parts = path.split(".")
    roots: list[list[str]]
    if parts[0] in message and len(parts) > 1:
        roots = [[]]
    else:
        roots = [["properties"], ["traits"], ["context", "traits"]]
    for root in roots:
        node: Any = message
        for key in [*root, *parts]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def _client_id(message: Mapping[str, Any], client_id_from: str | None) -> str:
    candidates = [lookup(message, client_id_from)] if client_id_from else []
    # anonymousId is the device's id, the closest thing Segment has to GA's client id;
    # a message with only a userId still needs one.
    candidates += [message.get("anonymousId"), message.get("userId")]
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise _Refused("no client_id: the message has no anonymousId or userId")


def _user_id(message: Mapping[str, Any], adjust: set[str]) -> str | None:
    user_id = message.get("userId")
    if not isinstance(user_id, str) or not user_id:
        return None
    if len(user_id) > MAX_USER_ID:
        adjust.add(ADJUSTED_USER_ID)
        return None
    return user_id


def _timestamp_micros(message: Mapping[str, Any], now: float) -> int | None:
    raw = message.get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None
    micros = (when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH
    seconds = micros.total_seconds()
    if now - seconds > BACKDATE_LIMIT_SECONDS:
        raise _Refused("the event is older than the 72 hours GA4 accepts (timestamp_micros)")
    if seconds > now:
        return None  # from the future (a skewed clock): GA4 then uses the time it receives it
    return micros // timedelta(microseconds=1)  # exact: no float rounding


# -- page and track ---------------------------------------------------------------------


def _properties(message: Mapping[str, Any]) -> dict[str, Any]:
    props = message.get("properties")
    return dict(props) if isinstance(props, Mapping) else {}


def _page_params(message: Mapping[str, Any], adjust: set[str]) -> dict[str, Any]:
    props = _properties(message)
    context = message.get("context")
    page = context.get("page") if isinstance(context, Mapping) else None
    page = page if isinstance(page, Mapping) else {}

    def first(*values: Any) -> Any:
        return next((v for v in values if v not in (None, "")), None)

    mapped = [
        ("page_location", first(props.get("url"), page.get("url"))),
        ("page_title", first(props.get("title"), page.get("title"), message.get("name"))),
        ("page_referrer", first(props.get("referrer"), page.get("referrer"))),
    ]
    pairs = [(k, v) for k, v in mapped if v is not None]
    pairs.append(
        ("engagement_time_msec", props.pop("engagement_time_msec", DEFAULT_ENGAGEMENT_MSEC))
    )
    pairs += sorted((k, v) for k, v in props.items() if k not in _PAGE_KEYS)
    return build_params(pairs, adjust, items=None)


def _track(message: Mapping[str, Any], adjust: set[str]) -> tuple[str, dict[str, Any]]:
    event = message.get("event")
    if not isinstance(event, str) or not event.strip():
        raise _Refused("a track call without an event name")
    props = _properties(message)
    spec = RECOMMENDED.get(event.strip())
    if spec is None:
        name = ga4_name(event, adjust, event=True)
        if name is None:
            raise _Refused(f"event name {event[:MAX_VALUE]!r} has no character GA4 allows")
        mapped: list[tuple[str, Any]] = []
        items = None
        consumed: set[str] = set()
    else:
        name = spec.name
        mapped, items, consumed = _recommended(event.strip(), spec, props, adjust)
    pairs = [
        *mapped,
        ("engagement_time_msec", props.get("engagement_time_msec", DEFAULT_ENGAGEMENT_MSEC)),
    ]
    consumed.add("engagement_time_msec")
    # Properties the mapping did not use travel as custom params, sorted so that
    # which ones fit in GA4's 25 does not depend on the client's key order.
    pairs += sorted((k, v) for k, v in props.items() if k not in consumed)
    params = build_params(pairs, adjust, items=items)
    if spec is None:
        _check_direct(name, params, adjust)
    return name, params


def _check_direct(name: str, params: dict[str, Any], adjust: set[str]) -> None:
    """A custom event named like a GA4 ecommerce event (``purchase`` sent as is) gets
    GA4's checks for that event, as the mapped ones do."""
    if name in ORDER_EVENTS and not params.get("transaction_id"):
        raise _Refused(f"a {name} event needs a transaction_id property")
    if name in ECOMMERCE_EVENTS and "value" in params and "currency" not in params:
        if name in ORDER_EVENTS:
            raise _Refused(f"a {name} event has a value but no currency (ISO 4217)")
        del params["value"]
        adjust.add(ADJUSTED_NO_CURRENCY)


def _recommended(
    event: str, spec: Recommended, props: dict[str, Any], adjust: set[str]
) -> tuple[list[tuple[str, Any]], list[dict[str, Scalar]] | None, set[str]]:
    consumed: set[str] = set()
    pairs: list[tuple[str, Any]] = []

    def take(keys: tuple[str, ...], convert: Callable[[Any], Any]) -> Any:
        consumed.update(keys)  # the alternatives not chosen are not custom params either
        for key in keys:
            if key in props:
                value = convert(props[key])
                if value is not None:
                    return value
        return None

    for param, keys in spec.fields.items():
        value = take(keys, lambda v: v if isinstance(v, str | int | float) and v != "" else None)
        if value is not None:
            pairs.append((param, str(value) if not isinstance(value, str) else value))
    if spec.order and not any(p == "transaction_id" for p, _ in pairs):
        raise _Refused(f"{event} needs properties.order_id (GA4 transaction_id)")
    for param, keys in spec.numbers.items():
        value = take(keys, number)
        if value is not None:
            pairs.append((param, value))

    items: list[dict[str, Scalar]] | None = None
    if spec.items == SINGLE:
        items = [_item(props, event, adjust)]
        consumed |= _ITEM_KEYS
    elif spec.items == PRODUCTS:
        consumed.add("products")
        items = _items(props.get("products"), event, adjust)
        if spec.items_required and not items:
            raise _Refused(f"{event} needs properties.products (GA4 items)")

    value = take(spec.value, number) if spec.value else None
    if value is None and spec.items == SINGLE and items:
        price, quantity = items[0].get("price"), items[0].get("quantity", 1)
        if isinstance(price, int | float) and isinstance(quantity, int | float):
            value = price * quantity
    consumed.add("currency")
    currency = _currency(props.get("currency"), event)
    if value is not None:
        if currency is None:
            if spec.order:
                raise _Refused(f"{event} has a value but no properties.currency (ISO 4217)")
            # GA4 ignores a value without a currency; send the event without it.
            adjust.add(ADJUSTED_NO_CURRENCY)
        else:
            pairs.append(("value", value))
    if currency is not None:
        pairs.append(("currency", currency))
    return pairs, items, consumed


def _currency(raw: Any, event: str) -> str | None:
    if raw is None or raw == "":
        return None
    code = currency(raw)
    if code is None:
        raise _Refused(f"{event}: currency {str(raw)[:20]!r} is not a 3-letter ISO 4217 code")
    return code


def _items(products: Any, event: str, adjust: set[str]) -> list[dict[str, Scalar]]:
    if not isinstance(products, list):
        return []
    if len(products) > MAX_ITEMS:
        adjust.add(ADJUSTED_OVER_LIMIT)
    return [
        _item(p if isinstance(p, Mapping) else {}, f"{event} products[{i}]", adjust)
        for i, p in enumerate(products[:MAX_ITEMS])
    ]


def _item(product: Mapping[str, Any], where: str, adjust: set[str]) -> dict[str, Scalar]:
    item: dict[str, Scalar] = {}
    for param, keys in _ITEM_FIELDS.items():
        raw = next((product[k] for k in keys if product.get(k) not in (None, "")), None)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)  # ids and names are strings in GA4; Segment allows numbers
        value = scalar(raw, MAX_VALUE, adjust) if raw is not None else None
        if value is not None:
            item[param] = value
    for param, keys in _ITEM_NUMBERS.items():
        num = next((n for k in keys if (n := number(product.get(k))) is not None), None)
        if num is not None:
            item[param] = int(num) if param in ("quantity", "index") else num
    if "item_id" not in item and "item_name" not in item:
        raise _Refused(f"{where} has neither product_id nor name (GA4 item_id / item_name)")
    return item
