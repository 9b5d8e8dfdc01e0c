"""The ga4 destination: mapping and GA4 rules, then eventd end to end into a GA4 contract server."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventd_plugins.ga4 import GoogleAnalytics4
from eventd_plugins.ga4.mapping import RECOMMENDED, Ga4Event, map_message
from eventd_plugins.ga4.rules import (
    ADJUSTED_DROPPED,
    ADJUSTED_NAME,
    ADJUSTED_NO_CURRENCY,
    ADJUSTED_OVER_LIMIT,
    ADJUSTED_TRUNCATED,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpServer

from eventd import OK, Event, Permanent, Retry, Skip
from eventd.config import ConfigError
from tests.contract.fixtures import counters, dead_letters, destination, post, skipped
from tests.contract.ga4_server import Ga4Server, validate
from tests.harness import EventdProcess, running

NOW = float(int(time.time()))


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def mapped(message: dict[str, Any], client_id_from: str | None = None) -> Ga4Event:
    result = map_message(
        {"anonymousId": "anon-1", "timestamp": iso(NOW - 60), **message},
        client_id_from=client_id_from,
        now=NOW,
    )
    assert isinstance(result, Ga4Event), result
    return result


def refused(message: dict[str, Any]) -> str:
    result = map_message({"anonymousId": "a", **message}, client_id_from=None, now=NOW)
    assert isinstance(result, Permanent), result
    return result.reason


# -- mapping ------------------------------------------------------------------------------


def test_custom_track_event() -> None:
    m = mapped(
        {"type": "track", "event": "Video Played", "userId": "u1", "properties": {"length": 31}}
    )
    assert (m.client_id, m.user_id) == ("anon-1", "u1")
    assert m.event == {
        "name": "Video_Played",
        "params": {"engagement_time_msec": 1, "length": 31},
        "timestamp_micros": int((NOW - 60) * 1_000_000),
    }
    assert m.adjustments == frozenset()  # spaces to underscores is the mapping, not a change


def test_client_id_from_a_path_then_anonymous_id_then_user_id() -> None:
    track = {"type": "track", "event": "X"}
    props = {**track, "properties": {"ga": {"cid": "GA1.1.5"}}}
    assert mapped(props, "properties.ga.cid").client_id == "GA1.1.5"
    traits = {**track, "context": {"traits": {"ga_client_id": "GA1.1.7"}}}
    assert mapped(traits, "ga_client_id").client_id == "GA1.1.7"  # bare name: looked up
    assert mapped(track, "properties.missing").client_id == "anon-1"
    only_user = map_message(
        {"type": "track", "event": "X", "userId": "u9"}, client_id_from=None, now=NOW
    )
    assert isinstance(only_user, Ga4Event) and only_user.client_id == "u9"


def test_order_completed_is_a_purchase_with_items() -> None:
    m = mapped(
        {
            "type": "track",
            "event": "Order Completed",
            "properties": {
                "order_id": "o-1",
                "total": 27.5,
                "revenue": 25,
                "tax": "2.5",
                "shipping": 3,
                "coupon": "SPRING",
                "currency": "eur",
                "affiliation": "shop",
                "products": [
                    {
                        "product_id": "p1",
                        "sku": "S1",
                        "name": "Tee",
                        "price": 10,
                        "quantity": 2,
                        "brand": "B",
                        "category": "Shirts",
                        "variant": "red",
                        "position": 1,
                    },
                    {"sku": 42, "price": 7.5},
                ],
            },
        }
    )
    assert m.event["name"] == "purchase"
    assert m.event["params"] == {
        "items": [
            {
                "item_id": "p1",
                "item_name": "Tee",
                "item_brand": "B",
                "item_category": "Shirts",
                "item_variant": "red",
                "price": 10,
                "quantity": 2,
                "index": 1,
            },
            {"item_id": "42", "price": 7.5},
        ],
        "transaction_id": "o-1",
        "affiliation": "shop",
        "coupon": "SPRING",
        "shipping": 3,
        "tax": 2.5,
        "value": 27.5,
        "currency": "EUR",
        "engagement_time_msec": 1,
    }


@pytest.mark.parametrize(
    ("segment", "ga4", "props", "expected"),
    [
        (
            "Product Added",
            "add_to_cart",
            {"product_id": "p", "price": 4, "quantity": 3, "currency": "USD"},
            {
                "items": [{"item_id": "p", "price": 4, "quantity": 3}],
                "value": 12,
                "currency": "USD",
            },
        ),
        (
            "Product Viewed",
            "view_item",
            {"name": "Cap", "currency": "USD", "price": 5},
            {"items": [{"item_name": "Cap", "price": 5}], "value": 5, "currency": "USD"},
        ),
        ("Product Removed", "remove_from_cart", {"product_id": "p"}, {"items": [{"item_id": "p"}]}),
        (
            "Checkout Started",
            "begin_checkout",
            {"value": 9, "currency": "GBP", "products": [{"product_id": "p"}], "coupon": "C"},
            {"items": [{"item_id": "p"}], "coupon": "C", "value": 9, "currency": "GBP"},
        ),
        ("Products Searched", "search", {"query": "blue shoes"}, {"search_term": "blue shoes"}),
        (
            "Product List Viewed",
            "view_item_list",
            {"list_id": "L1", "category": "Deals", "products": [{"name": "A"}]},
            {"items": [{"item_name": "A"}], "item_list_id": "L1", "item_list_name": "Deals"},
        ),
        (
            "Payment Info Entered",
            "add_payment_info",
            {"payment_method": "card"},
            {"items": [], "payment_type": "card"},
        ),
        (
            "Promotion Viewed",
            "view_promotion",
            {"promotion_id": "pr", "name": "Sale", "creative": "banner", "position": "top"},
            {
                "promotion_id": "pr",
                "promotion_name": "Sale",
                "creative_name": "banner",
                "creative_slot": "top",
            },
        ),
        ("Signed Up", "sign_up", {"type": "invited"}, {"method": "invited"}),
    ],
)
def test_segment_ecommerce_events_become_ga4_recommended_events(
    segment: str, ga4: str, props: dict[str, Any], expected: dict[str, Any]
) -> None:
    m = mapped({"type": "track", "event": segment, "properties": props})
    assert m.event["name"] == ga4
    assert m.event["params"] == {**expected, "engagement_time_msec": 1}
    assert validate({"client_id": m.client_id, "events": [m.event]}) == []


def test_page_is_page_view() -> None:
    m = mapped(
        {
            "type": "page",
            "name": "Pricing",
            "properties": {"url": "https://x.test/pricing?a=1", "path": "/pricing", "plan": "pro"},
            "context": {"page": {"referrer": "https://search.test/", "title": "Pricing | X"}},
        }
    )
    assert m.event["name"] == "page_view"
    assert m.event["params"] == {
        "page_location": "https://x.test/pricing?a=1",
        "page_title": "Pricing | X",  # the document's title; the page name is the fallback
        "page_referrer": "https://search.test/",
        "engagement_time_msec": 1,
        "plan": "pro",
    }
    named = mapped({"type": "page", "name": "Pricing"})
    assert named.event["params"]["page_title"] == "Pricing"


@pytest.mark.parametrize("kind", ["identify", "group", "alias", "screen"])
def test_calls_ga4_does_not_take_are_skipped_with_a_reason(kind: str) -> None:
    result = map_message({"type": kind, "userId": "u"}, client_id_from=None, now=NOW)
    assert isinstance(result, Skip) and kind in result.reason and "GA4" in result.reason


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Signed Up!", "Signed_Up"),
        ("checkout.step-2", "checkout_step_2"),
        ("_private", "private"),
        ("2fa enabled", "x_2fa_enabled"),
        ("session_start", "x_session_start"),
        ("firebase_thing", "x_firebase_thing"),
        ("ga_thing", "x_ga_thing"),
        ("Google_thing", "x_Google_thing"),
        ("gtag.config", "gtag_config"),
        ("a" * 50, "a" * 40),
    ],
)
def test_event_names_are_sanitised_and_counted(raw: str, name: str) -> None:
    m = mapped({"type": "track", "event": raw})
    assert m.event["name"] == name
    assert ADJUSTED_NAME in m.adjustments
    assert validate({"client_id": "c", "events": [m.event]}) == []


def test_params_are_sanitised_and_counted() -> None:
    props: dict[str, Any] = {
        "ok": "fine",
        "nested": {"a": 1},
        "list": [1, 2],
        "nothing": None,
        "flag": True,
        "long": "x" * 150,
        "ga_reserved": 1,
        "spaced name": 2,
        "spaced_name": 3,  # clashes with the sanitised "spaced name": dropped
    }
    m = mapped({"type": "track", "event": "E", "properties": props})
    assert m.event["params"] == {
        "engagement_time_msec": 1,
        "flag": "true",
        "long": "x" * 100,
        "ok": "fine",
        "spaced_name": 2,
        "x_ga_reserved": 1,
    }
    assert m.adjustments == {ADJUSTED_DROPPED, ADJUSTED_TRUNCATED, ADJUSTED_NAME}


def test_only_25_params_are_kept_deterministically() -> None:
    props = {f"p{i:02d}": i for i in range(40)}
    m = mapped({"type": "track", "event": "E", "properties": dict(reversed(props.items()))})
    params = m.event["params"]
    assert len(params) == 25
    assert list(params) == ["engagement_time_msec", *(f"p{i:02d}" for i in range(24))]
    assert ADJUSTED_OVER_LIMIT in m.adjustments


def test_page_location_keeps_1000_characters() -> None:
    url = "https://x.test/" + "a" * 1200
    m = mapped({"type": "page", "properties": {"url": url}})
    assert m.event["params"]["page_location"] == url[:1000]


def test_money_without_currency() -> None:
    # A cart event loses its value (GA4 ignores it without a currency), counted...
    m = mapped({"type": "track", "event": "Product Added", "properties": {"sku": "s", "price": 3}})
    assert "value" not in m.event["params"]
    assert ADJUSTED_NO_CURRENCY in m.adjustments
    # ... a purchase is refused: its revenue would be wrong.
    order = {"type": "track", "event": "Order Completed"}
    props = {"order_id": "o", "total": 5, "products": [{"sku": "s"}]}
    assert "currency" in refused({**order, "properties": props})


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"total": 5, "currency": "USD", "products": [{"sku": "s"}]}, "order_id"),
        ({"order_id": "o", "currency": "USD"}, "products"),
        ({"order_id": "o", "currency": "US Dollar", "products": [{"sku": "s"}]}, "ISO 4217"),
        ({"order_id": "o", "products": [{"price": 3}]}, "products[0] has neither"),
    ],
)
def test_purchases_ga4_would_drop_are_refused(props: dict[str, Any], reason: str) -> None:
    assert reason in refused({"type": "track", "event": "Order Completed", "properties": props})


def test_events_older_than_72_hours_are_refused() -> None:
    old = {"type": "track", "event": "E", "timestamp": iso(NOW - 73 * 3600)}
    assert "72 hours" in refused(old)
    future = mapped({"type": "track", "event": "E", "timestamp": iso(NOW + 600)})
    assert "timestamp_micros" not in future.event  # GA4 uses the time it receives it


def test_settings_are_validated_and_the_secret_is_not_shown() -> None:
    good = {"measurement_id": "G-ABC123XYZ", "api_secret": "s3cr3t"}
    GoogleAnalytics4.validate_settings("g", good)
    with pytest.raises(ConfigError, match=r"destinations\.g\.settings\.measurement_id"):
        GoogleAnalytics4.validate_settings("g", {**good, "measurement_id": "UA-1234-1"})
    with pytest.raises(ConfigError, match="api_secret") as err:
        GoogleAnalytics4.validate_settings("g", {"measurement_id": "G-ABC123XYZ"})
    with pytest.raises(ConfigError, match=r"settings\.api_secret = \*\*\*") as err:
        GoogleAnalytics4.validate_settings("g", {**good, "api_secret": ""})
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigError, match="region"):
        GoogleAnalytics4.validate_settings("g", {**good, "region": "us"})


def test_the_contract_server_rejects_what_ga4_rejects() -> None:
    """Guards the end-to-end tests: this server is not one that accepts anything."""
    bad = {
        "events": [
            {"name": "_bad", "params": {"x": {"nested": 1}}},
            {"name": "purchase", "params": {"value": 3, "items": [{"price": 1}]}},
            {"name": "ok", "params": {f"p{i}": i for i in range(26)}},
        ]
    }
    found = sorted(
        (m["validationCode"], m["fieldPath"], m["description"].split(" has ")[0][:22])
        for m in validate(bad)
    )
    assert found == [
        ("EXCEEDED_MAX_ENTITIES", "events", "Event at index: [2]"),  # 26 params
        ("NAME_RESERVED", "events", "Event at index: [0]"),  # "_" prefix
        ("VALUE_INVALID", "events", "Event at index: [0]"),  # a nested value
        ("VALUE_REQUIRED", "client_id", "client_id is required."),
        ("VALUE_REQUIRED", "events", "Event at index: [1] (p"),  # purchase: transaction_id
        ("VALUE_REQUIRED", "events", "Event at index: [1] it"),  # item without id or name
        ("VALUE_REQUIRED", "events", "Event at index: [1] se"),  # value without currency
    ]
    assert validate({"client_id": "c", "events": [{"name": "e"}] * 26})[0]["validationCode"] == (
        "EXCEEDED_MAX_ENTITIES"
    )


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=150),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_props = st.dictionaries(st.text(max_size=50), _values, max_size=30)
_product = st.fixed_dictionaries(
    {"product_id": st.text(min_size=1, max_size=120)},
    optional={"name": st.text(max_size=120), "price": _values, "quantity": st.integers(0, 9)},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["track", "page"]),
    event=st.one_of(
        st.text(max_size=60),
        st.sampled_from(sorted(RECOMMENDED)),  # Segment spec names, mapped
        st.sampled_from(sorted(s.name for s in RECOMMENDED.values())),  # GA4 names sent as is
    ),
    props=_props,
    products=st.lists(_product, max_size=3),
    currency=st.sampled_from([None, "usd", "EUR", "dollars", 5]),
)
def test_whatever_the_mapping_sends_ga4_accepts(
    kind: str, event: str, props: dict[str, Any], products: list[Any], currency: str | None
) -> None:
    props = {**props, "products": products, "product_id": "p", "order_id": "o"}
    if currency is not None:
        props["currency"] = currency
    message = {"type": kind, "event": event, "anonymousId": "a", "properties": props}
    result = map_message(message, client_id_from=None, now=NOW)
    if isinstance(result, Ga4Event):
        assert validate({"client_id": result.client_id, "events": [result.event]}) == []
    else:
        assert isinstance(result, Permanent)  # refused with a reason, never sent broken


# -- end to end ---------------------------------------------------------------------------


# The `ga4` fixture (the contract server on a thread) is in tests/contract/fixtures.py.
NAME = "g"


def start(eventd: Callable[..., EventdProcess], server: Ga4Server, **extra: Any) -> EventdProcess:
    base = {
        "measurement_id": server.measurement_id,
        "api_secret": server.api_secret,
        "endpoint": server.url,
    }
    return eventd({"destinations": {NAME: destination("ga4", {**base, **extra})}})


def adjusted(ev: EventdProcess) -> dict[str, float]:
    """reason -> count, from ``eventd_adjusted_events_total{destination=NAME}``."""
    return {
        labels["reason"]: value
        for labels, value in counters(ev, "eventd_adjusted_events")
        if labels["destination"] == NAME
    }


def test_a_batch_end_to_end(eventd: Callable[..., EventdProcess], ga4: Ga4Server) -> None:
    ev = start(eventd, ga4, client_id_from="properties.ga_client_id")
    messages: list[dict[str, Any]] = [
        {
            "type": "track",
            "event": "Video Played",
            "anonymousId": "a1",
            "messageId": f"v{i}",
            "properties": {"n": i},
        }
        for i in range(30)
    ]
    messages += [
        {
            "type": "page",
            "anonymousId": "a1",
            "name": "Home",
            "messageId": "page",
            "properties": {"url": "https://x.test/"},
        },
        {
            "type": "track",
            "event": "Order Completed",
            "anonymousId": "a2",
            "userId": "u2",
            "messageId": "order",
            "properties": {
                "order_id": "o1",
                "total": 9,
                "currency": "USD",
                "products": [{"product_id": "p1", "price": 9}],
            },
        },
        {
            "type": "track",
            "event": "Signed In!",
            "anonymousId": "a3",
            "messageId": "cid",
            "properties": {"ga_client_id": "GA1.1.42"},
        },
        {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}, "messageId": "i"},
        {"type": "group", "userId": "u2", "groupId": "g1", "messageId": "g"},
        {"type": "alias", "userId": "u2", "previousId": "a2", "messageId": "al"},
        {"type": "screen", "anonymousId": "a1", "name": "Home", "messageId": "s"},
    ]
    post(ev, messages)
    ev.drain()

    assert ga4.problems == []
    got = sorted(
        (client, user, e["name"], e["params"].get("n", -1)) for client, user, e in ga4.events()
    )
    assert got == sorted(
        [("a1", None, "Video_Played", i) for i in range(30)]
        + [
            ("a1", None, "page_view", -1),
            ("a2", "u2", "purchase", -1),
            ("GA1.1.42", None, "Signed_In", -1),
        ]
    )
    for request in ga4.collect_requests():
        assert len(request.body["events"]) <= 25 and request.status == 204
    assert dead_letters(ev, NAME) == {}
    assert skipped(ev, NAME) == {
        "identify calls are not supported by GA4": 1.0,
        "group calls are not supported by GA4": 1.0,
        "alias calls are not supported by GA4": 1.0,
        "screen calls are not supported by GA4 web streams": 1.0,
    }
    assert adjusted(ev) == {"name_changed": 1.0}  # "Signed In!" -> Signed_In
    assert ga4.api_secret not in ev.log()


def test_validate_sends_to_the_debug_endpoint_first(
    eventd: Callable[..., EventdProcess], ga4: Ga4Server
) -> None:
    # A rule eventd does not know (Google adds reserved names): only validation catches it.
    ga4.reserved_events = ga4.reserved_events | {"tip", "tap"}
    ev = start(eventd, ga4, validate=True)
    post(
        ev,
        [
            {"type": "track", "event": "Good", "anonymousId": "a", "messageId": "good"},
            {"type": "track", "event": "tip", "anonymousId": "a", "messageId": "tip"},
            {"type": "track", "event": "Good", "anonymousId": "b", "messageId": "good2"},
            {"type": "track", "event": "tap", "anonymousId": "b", "messageId": "tap"},
        ],
    )
    ev.drain()
    assert dead_letters(ev, NAME) == {
        "tip": "GA4 validation: NAME_RESERVED at events: Event at index: [1] has invalid name:"
        " [tip] is reserved.",
        "tap": "GA4 validation: NAME_RESERVED at events: Event at index: [1] has invalid name:"
        " [tap] is reserved.",
    }
    assert sorted((c, e["name"]) for c, _, e in ga4.events()) == [("a", "Good"), ("b", "Good")]
    assert ga4.problems == []  # nothing GA4 would have dropped reached /mp/collect
    assert sorted(r.path for r in ga4.received) == ["/debug/mp/collect"] * 2 + ["/mp/collect"] * 2


def test_429_waits_for_retry_after(eventd: Callable[..., EventdProcess], ga4: Ga4Server) -> None:
    ev = start(eventd, ga4)
    ga4.script.append((429, {"Retry-After": "1"}, "slow down"))
    started = time.monotonic()
    post(ev, [{"type": "track", "event": f"E{i}", "anonymousId": "a"} for i in range(3)])
    ev.drain()
    assert time.monotonic() - started >= 1.0  # not the 50 ms backoff: GA4's own wait
    assert [r.status for r in ga4.collect_requests()] == [429, 204]
    assert sorted(e["name"] for _, _, e in ga4.events()) == ["E0", "E1", "E2"]
    assert dead_letters(ev, NAME) == {}


def test_413_splits_and_resends(eventd: Callable[..., EventdProcess], tmp_path: Path) -> None:
    with running(Ga4Server(max_body=2500)) as ga4:
        ev = start(eventd, ga4)
        small = [
            {
                "type": "track",
                "event": "E",
                "anonymousId": "a",
                "messageId": f"m{i}",
                "properties": {"n": i, "text": "t" * 90, "more": "m" * 90},
            }
            for i in range(12)
        ]
        huge = {
            "type": "track",
            "event": "E",
            "anonymousId": "a",
            "messageId": "huge",
            "properties": {f"p{i}": "h" * 100 for i in range(24)},
        }
        post(ev, [*small[:6], huge, *small[6:]])
        ev.drain()
        statuses = [r.status for r in ga4.collect_requests()]
        assert 413 in statuses
        assert all(r.size < 2500 for r in ga4.collect_requests() if r.status == 204)
        assert sorted(e["params"]["n"] for _, _, e in ga4.events()) == list(range(12))
        dead = dead_letters(ev, NAME)
        assert list(dead) == ["huge"] and "too large (413)" in dead["huge"]
        assert ga4.problems == []


def test_a_refusal_is_permanent_and_never_shows_the_secret(
    eventd: Callable[..., EventdProcess], ga4: Ga4Server
) -> None:
    """GA4 itself does not check credentials; a proxy in front of it may."""
    ev = start(eventd, ga4)
    echo = f"Forbidden: /mp/collect?measurement_id={ga4.measurement_id}&api_secret={ga4.api_secret}"
    ga4.script.append((403, {}, echo))
    post(ev, [{"type": "track", "event": "E", "anonymousId": "a", "messageId": "m1"}])
    ev.drain()
    dead = dead_letters(ev, NAME)
    assert list(dead) == ["m1"]
    assert "HTTP 403" in dead["m1"] and "check measurement_id and api_secret" in dead["m1"]
    assert "api_secret=***" in dead["m1"]
    assert ga4.api_secret not in dead["m1"] and ga4.api_secret not in ev.log()


def test_a_wrong_secret_is_silently_dropped_by_ga4(
    eventd: Callable[..., EventdProcess], ga4: Ga4Server
) -> None:
    """Like Google's, the server answers 204 and drops the data: nothing eventd can see.
    This is why the secret's format is all `eventd check` can verify."""
    ev = start(eventd, ga4, api_secret="not-the-secret")
    post(ev, [{"type": "track", "event": "E", "anonymousId": "a"}])
    ev.drain()
    assert ga4.events() == []
    assert ga4.problems == ["unknown measurement_id or api_secret: request dropped"]
    assert [r.query["api_secret"] for r in ga4.collect_requests()] == ["not-the-secret"]


def test_eventd_check_names_a_bad_setting(tmp_path: Path) -> None:
    config = {
        "destinations": {
            "g": {
                "type": "ga4",
                "settings": {"measurement_id": "G-NOTVALID!", "api_secret": "s3cr3t"},
            }
        }
    }
    result = EventdProcess(tmp_path, config).cli("check")
    assert result.returncode == 1
    assert "destinations.g.settings.measurement_id" in result.stdout + result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


# -- adjustments, counted -----------------------------------------------------------------


def adjusted_batch() -> list[dict[str, Any]]:
    """Three events GA4 takes only after changes, one it takes as it is, one it skips."""
    note = "n" * 150  # over GA4's 100 characters
    when = iso(time.time() - 60)
    return [
        {"type": "track", "event": "Signed In!", "messageId": "renamed", "timestamp": when},
        {"type": "track", "event": "Note", "messageId": "cut", "properties": {"note": note}},
        {"type": "track", "event": "Both!", "messageId": "both", "properties": {"note": note}},
        {"type": "track", "event": "Clean", "messageId": "clean", "properties": {"n": 1}},
        {"type": "identify", "userId": "u", "messageId": "skipped", "traits": {"a": 1}},
    ]


async def test_deliver_counts_adjusted_events_once_they_get_through(
    aiohttp_server: AiohttpServer,
) -> None:
    server = Ga4Server()
    server.port = (await aiohttp_server(server.app())).port
    settings = {
        "measurement_id": server.measurement_id,
        "api_secret": server.api_secret,
        "endpoint": server.url,
    }
    batch = [
        Event(seq, "app", int(NOW * 1000), {"anonymousId": "a", **m})
        for seq, m in enumerate(adjusted_batch(), 1)
    ]
    counted: list[tuple[str, int]] = []
    async with aiohttp.ClientSession() as session:
        dest = GoogleAnalytics4("g", settings, session)
        dest.on_adjusted = lambda reason, events: counted.append((reason, events))

        server.script.append((503, {}, "unavailable"))
        outcomes = await dest.deliver(batch)
        assert [type(o) for o in outcomes] == [Retry] * 4 + [Skip]
        assert counted == []  # to be counted when they get through, not per attempt

        server.script.append((400, {}, "bad request"))
        outcomes = await dest.deliver(batch)
        assert [type(o) for o in outcomes] == [Permanent] * 4 + [Skip]
        assert counted == []  # dead letters, not delivered

        outcomes = await dest.deliver(batch)
        assert list(outcomes[:4]) == [OK] * 4
        assert sorted(counted) == [("name_changed", 2), ("value_truncated", 2)]
    assert server.problems == []


def test_adjusted_events_are_counted_in_metrics_once(
    eventd: Callable[..., EventdProcess], ga4: Ga4Server
) -> None:
    ev = start(eventd, ga4)
    assert adjusted(ev) == {}
    ga4.script.append((503, {}, "unavailable"))  # the first attempt is retried
    post(ev, [{"anonymousId": "a", **m} for m in adjusted_batch()])
    ev.drain()
    assert [r.status for r in ga4.collect_requests()] == [503, 204]
    assert sorted(e["name"] for _, _, e in ga4.events()) == ["Both", "Clean", "Note", "Signed_In"]
    assert adjusted(ev) == {"name_changed": 2.0, "value_truncated": 2.0}
    assert ga4.problems == []
