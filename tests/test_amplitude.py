"""The amplitude destination: its mapping, its reading of Amplitude's answers (against the
contract server in-process) and eventd end to end into the contract server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.amplitude import Amplitude
from eventd_plugins.amplitude.mapping import SKIP_ALIAS, SKIP_GROUP, Options, map_message, revenue

from eventd import OK, Event, Permanent, Retry, Skip, fold, worst
from eventd.config import ConfigError
from eventd.normalize import Envelope, normalize
from tests.contract.amplitude_server import BATCH_API, HTTP_API, AmplitudeServer
from tests.contract.fixtures import dead_letters, destination, send, skipped
from tests.harness import EventdProcess

NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
OPTIONS = Options()


def stored(**raw: Any) -> dict[str, Any]:
    """A message as eventd stores it (normalized, timestamps filled in)."""
    return normalize(raw, None, Envelope(received_at=NOW))


def events(*messages: dict[str, Any]) -> list[Event]:
    return [Event(seq, "app", NOW_MS, m, len(orjson.dumps(m))) for seq, m in enumerate(messages, 1)]


def mapped_events(mapped: list[dict[str, Any]] | Skip) -> list[dict[str, Any]]:
    assert isinstance(mapped, list), mapped
    return mapped


# -- mapping -------------------------------------------------------------------------


def test_track_maps_ids_time_device_and_properties() -> None:
    message = stored(
        type="track",
        event="Song Played",
        userId="user-1",
        anonymousId="anon-1",
        messageId="m-1",
        timestamp="2024-05-01T12:00:00.250Z",
        properties={"title": "Blue"},
        integrations={"Amplitude": {"session_id": 1714564800000}},
        context={
            "ip": "203.0.113.9",
            "locale": "en-GB",
            "app": {"version": "3.2.1"},
            "os": {"name": "iOS", "version": "17.1"},
            "device": {
                "id": "device-9",
                "type": "ios",
                "manufacturer": "Apple",
                "model": "iPhone15,2",
                "advertisingId": "ad-1",
            },
            "network": {"carrier": "Vodafone"},
            "location": {"country": "GB", "city": "London", "latitude": 51.5, "longitude": -0.12},
            "library": {"name": "analytics-ios", "version": "4.1"},
        },
    )
    assert map_message(message, NOW_MS, OPTIONS) == [
        {
            "user_id": "user-1",
            "device_id": "device-9",
            "time": int(datetime(2024, 5, 1, 12, 0, 0, 250000, UTC).timestamp() * 1000),
            "insert_id": "m-1",
            "session_id": 1714564800000,
            "platform": "ios",
            "os_name": "iOS",
            "os_version": "17.1",
            "device_manufacturer": "Apple",
            "device_model": "iPhone15,2",
            "carrier": "Vodafone",
            "country": "GB",
            "city": "London",
            "location_lat": 51.5,
            "location_lng": -0.12,
            "language": "en-GB",
            "ip": "203.0.113.9",
            "app_version": "3.2.1",
            "idfa": "ad-1",
            "library": "eventd/analytics-ios",
            "event_type": "Song Played",
            "event_properties": {"title": "Blue"},
        }
    ]


def test_a_browser_event_reports_the_browser_as_amplitude_does() -> None:
    message = stored(
        type="track",
        event="X",
        anonymousId="anon-12345",
        context={"userAgent": IPHONE_SAFARI, "library": {"name": "analytics.js"}},
    )
    [event] = mapped_events(map_message(message, NOW_MS, OPTIONS))
    assert {
        k: event.get(k) for k in ("device_id", "platform", "os_name", "os_version", "device_model")
    } == {
        "device_id": "anon-12345",
        "platform": "Web",
        "os_name": "Mobile Safari",
        "os_version": "17",
        "device_model": "iPhone",
    }
    assert "user_id" not in event


@pytest.mark.parametrize(
    ("event", "properties", "expected"),
    [
        (
            "Order Completed",
            {"total": 30.5, "revenue": 25, "productId": "sku-1", "quantity": 2, "price": 12.5},
            {"revenue": 25, "price": 12.5, "quantity": 2, "productId": "sku-1"},
        ),
        (
            "Order Completed",
            {"total": "30.50", "revenue_type": "purchase"},
            {"revenue": 30.5, "revenueType": "purchase"},
        ),
        ("Refunded", {"revenue": -10}, {"revenue": -10}),
        ("Viewed", {"total": 30}, {}),
        ("Bought", {"price": 3, "quantity": 1.5}, {"price": 3}),
    ],
)
def test_revenue_fields(event: str, properties: dict[str, Any], expected: dict[str, Any]) -> None:
    assert revenue(event, properties) == expected


def test_page_and_screen_become_viewed_events() -> None:
    page = stored(
        type="page", name="Pricing", category="Docs", userId="user-1", properties={"path": "/p"}
    )
    [event] = mapped_events(map_message(page, NOW_MS, OPTIONS))
    assert event["event_type"] == "Viewed Pricing Page"
    assert event["event_properties"] == {"name": "Pricing", "category": "Docs", "path": "/p"}
    screen = stored(type="screen", userId="user-1")
    [event] = mapped_events(map_message(screen, NOW_MS, Options(page_event_name="{type} View")))
    assert event["event_type"] == "Screen View"


def test_identify_sets_user_properties() -> None:
    message = stored(
        type="identify",
        userId="user-1",
        anonymousId="anon-1",
        messageId="i1",
        traits={"plan": "pro"},
    )
    [event] = mapped_events(map_message(message, NOW_MS, OPTIONS))
    assert {
        k: event[k] for k in ("event_type", "user_id", "device_id", "insert_id", "user_properties")
    } == {
        "event_type": "$identify",
        "user_id": "user-1",
        "device_id": "anon-1",
        "insert_id": "i1",
        "user_properties": {"$set": {"plan": "pro"}},
    }


def test_group_needs_a_group_type_and_becomes_membership_and_group_properties() -> None:
    message = stored(
        type="group", userId="user-1", groupId="acme", messageId="g1", traits={"plan": "gold"}
    )
    assert map_message(message, NOW_MS, OPTIONS) == SKIP_GROUP
    membership, properties = mapped_events(
        map_message(message, NOW_MS, Options(group_type="company"))
    )
    assert (membership["event_type"], membership["insert_id"], membership["groups"]) == (
        "$identify",
        "g1",
        {"company": "acme"},
    )
    assert membership["user_properties"] == {"$set": {"company": "acme"}}
    assert (properties["event_type"], properties["insert_id"], properties["group_properties"]) == (
        "$groupidentify",
        "g1-group",
        {"$set": {"plan": "gold"}},
    )


def test_alias_is_skipped() -> None:
    message = stored(type="alias", userId="user-1", previousId="anon-1")
    assert map_message(message, NOW_MS, OPTIONS) == SKIP_ALIAS


def test_a_call_made_of_several_items_gets_the_most_pressing_outcome() -> None:
    retry, dead = Retry("busy", 3.0), Permanent("bad")
    assert fold(3, [0, 0, 1, 1, 2], [OK, retry, OK, dead, SKIP_ALIAS]) == [retry, dead, SKIP_ALIAS]
    assert worst([dead, Retry("later", 1.0), retry]) == Retry("later; busy", 3.0)
    assert worst([OK, SKIP_GROUP]) == OK


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "destinations.amp.settings: 'api_key' is a required property"),
        ({"api_key": "k3y-s3cret", "region": "in"}, "settings.region = 'in'"),
        ({"api_key": "k3y-s3cret", "use_batch_api": "yes"}, "settings.use_batch_api = 'yes'"),
        ({"api_key": "k3y-s3cret", "min_id_length": 0}, "settings.min_id_length = 0"),
        ({"api_key": "k3y-s3cret", "page_event_name": "{nme}"}, "unknown placeholder {nme}"),
        ({"api_key": "k3y-s3cret", "apikey": "x"}, "'apikey' was unexpected"),
        ({"api_key": ""}, "settings.api_key = ***"),
    ],
)
def test_settings_errors_name_the_key_and_never_show_a_secret(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Amplitude.validate_settings("amp", settings)
    assert expected in str(err.value)
    assert "k3y-s3cret" not in str(err.value)


async def test_region_and_api_pick_the_url() -> None:
    async with aiohttp.ClientSession() as session:
        eu = Amplitude("amp", {"api_key": "k", "region": "eu"}, session)
        assert eu.endpoint + eu.path == "https://api.eu.amplitude.com/2/httpapi"
        us_batch = Amplitude("amp", {"api_key": "k", "use_batch_api": True}, session)
        assert us_batch.endpoint + us_batch.path == "https://api2.amplitude.com/batch"


# -- answers, against the contract server in-process ---------------------------------------

ServerFactory = Callable[[Any], Awaitable[Any]]


@pytest.fixture
async def api(aiohttp_server: ServerFactory) -> AmplitudeServer:
    server = AmplitudeServer()
    started = await aiohttp_server(server.app())
    server.port = started.port
    return server


async def deliver(api: AmplitudeServer, batch: list[Event], **settings: Any) -> list[Any]:
    config = {"api_key": api.api_key, "endpoint": api.url, **settings}
    async with aiohttp.ClientSession() as session:
        return list(await Amplitude("amp", config, session).deliver(batch))


def track(message_id: str, user_id: str = "user-1", **raw: Any) -> dict[str, Any]:
    return stored(type="track", event="A", userId=user_id, messageId=message_id, **raw)


async def test_refused_events_fail_and_the_rest_is_resent_once(api: AmplitudeServer) -> None:
    batch = events(track("ok-1"), track("short", user_id="u1"), track("ok-2"))
    outcomes = await deliver(api, batch)
    assert outcomes[0] == outcomes[2] == OK
    assert isinstance(outcomes[1], Permanent)
    assert "user_id shorter than min_id_length" in outcomes[1].reason
    assert api.statuses() == [400, 200]
    assert api.deliveries == {"ok-1": 1, "ok-2": 1}


async def test_min_id_length_lets_short_ids_through(api: AmplitudeServer) -> None:
    assert await deliver(api, events(track("m1", user_id="42")), min_id_length=1) == [OK]
    assert api.requests[0].status == 200 and api.deliveries == {"m1": 1}


async def test_batch_api_drops_a_short_id_and_keeps_the_event_with_the_other(
    api: AmplitudeServer,
) -> None:
    batch = events(
        stored(type="track", event="A", userId="u1", anonymousId="anon-1", messageId="b1")
    )
    assert await deliver(api, batch, use_batch_api=True) == [OK]
    assert [r.path for r in api.requests] == [BATCH_API]


async def test_a_throttled_request_waits_the_wait_and_over_quota_is_permanent(
    api: AmplitudeServer,
) -> None:
    api.throttle("user-busy")
    api.over_quota("user-spent")
    batch = events(track("t1", user_id="user-busy"), track("t2", user_id="user-spent"), track("t3"))
    outcomes = await deliver(api, batch, throttle_wait=12)
    assert [type(o) for o in outcomes] == [Retry, Permanent, Retry]
    assert outcomes[0].after == outcomes[2].after == 12.0
    assert "daily event quota" in outcomes[1].reason
    assert api.deliveries == {}


async def test_an_invalid_api_key_is_permanent_and_not_repeated(api: AmplitudeServer) -> None:
    [outcome] = await deliver(api, events(track("k1")), api_key="wrong-k3y")
    assert isinstance(outcome, Permanent) and "Invalid API key" in outcome.reason
    assert "wrong-k3y" in api.requests[0].body["error"]  # the API echoes it...
    assert "wrong-k3y" not in outcome.reason  # ...eventd does not


async def test_a_group_call_succeeds_only_when_both_its_events_do(api: AmplitudeServer) -> None:
    message = stored(type="group", userId="u1", groupId="acme", messageId="g1", traits={"n": 1})
    [outcome] = await deliver(api, events(message), group_type="company")
    assert isinstance(outcome, Permanent) and "user_id shorter" in outcome.reason
    assert api.deliveries == {}
    assert await deliver(api, events(message), group_type="company", min_id_length=2) == [OK]
    assert api.deliveries == {"g1": 1, "g1-group": 1}


# -- end to end: eventd into the contract server ----------------------------------------


# The `amplitude` fixture (the contract server on a thread) is in tests/contract/fixtures.py.
NAME = "amp"


def start(
    eventd: Callable[..., EventdProcess], server: AmplitudeServer, **settings: Any
) -> EventdProcess:
    base = {"api_key": server.api_key, "endpoint": server.url}
    return eventd({"destinations": {NAME: destination("amplitude", {**base, **settings})}})


@pytest.mark.parametrize("use_batch_api", [False, True])
def test_every_call_type_reaches_amplitude(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer, use_batch_api: bool
) -> None:
    ev = start(eventd, amplitude, group_type="company", use_batch_api=use_batch_api)
    send(
        ev,
        [
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "user-1",
                "messageId": "t1",
                "properties": {"revenue": 42.5, "currency": "EUR"},
                "integrations": {"Amplitude": {"session_id": 1714564800000}},
            },
            {"type": "page", "name": "Pricing", "anonymousId": "anon-1", "messageId": "p1"},
            {"type": "screen", "name": "Home", "userId": "user-1", "messageId": "s1"},
            {
                "type": "identify",
                "userId": "user-1",
                "anonymousId": "anon-1",
                "messageId": "i1",
                "traits": {"plan": "pro"},
            },
            {
                "type": "group",
                "userId": "user-1",
                "groupId": "acme",
                "messageId": "g1",
                "traits": {"name": "Acme"},
            },
            {"type": "alias", "userId": "user-1", "previousId": "anon-1", "messageId": "a1"},
        ],
    )
    assert amplitude.deliveries == {"t1": 1, "p1": 1, "s1": 1, "i1": 1, "g1": 1, "g1-group": 1}
    path = BATCH_API if use_batch_api else HTTP_API
    assert {r.path for r in amplitude.requests} == {path}
    got = amplitude.ingested
    assert (got["t1"]["revenue"], got["t1"]["session_id"]) == (42.5, 1714564800000)
    assert [got[i]["event_type"] for i in ("p1", "s1", "i1", "g1", "g1-group")] == [
        "Viewed Pricing Page",
        "Viewed Home Screen",
        "$identify",
        "$identify",
        "$groupidentify",
    ]
    assert got["g1-group"]["group_properties"] == {"$set": {"name": "Acme"}}
    assert skipped(ev, NAME) == {SKIP_ALIAS.reason: 1}
    assert dead_letters(ev, NAME) == {}


def test_only_the_events_amplitude_refuses_are_dead_lettered(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer
) -> None:
    ev = start(eventd, amplitude)
    send(
        ev,
        [
            {"type": "track", "event": "A", "userId": "user-1", "messageId": "good-1"},
            {"type": "track", "event": "A", "userId": "u7", "messageId": "short-id"},
            {"type": "track", "event": "A", "userId": "user-2", "messageId": "good-2"},
            {
                "type": "track",
                "event": "A",
                "anonymousId": "00000000-0000-0000-0000-000000000000",
                "messageId": "zero",
            },
        ],
    )
    assert amplitude.deliveries == {"good-1": 1, "good-2": 1}
    dead = dead_letters(ev, NAME)
    assert set(dead) == {"short-id", "zero"}
    assert "user_id shorter than min_id_length" in dead["short-id"]
    assert "invalid device_id" in dead["zero"]


def test_throttling_waits_then_delivers_and_over_quota_is_dead_lettered(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer
) -> None:
    amplitude.fail_next(HTTP_API, 503)
    amplitude.throttle("user-busy", times=1)
    amplitude.over_quota("user-spent")
    ev = start(eventd, amplitude, throttle_wait=1)
    send(
        ev,
        [
            {"type": "track", "event": "A", "userId": "user-busy", "messageId": "t1"},
            {"type": "track", "event": "A", "userId": "user-spent", "messageId": "t2"},
            {"type": "track", "event": "A", "userId": "user-calm", "messageId": "t3"},
        ],
    )
    assert amplitude.statuses() == [503, 429, 200]
    assert amplitude.deliveries == {"t1": 1, "t3": 1}
    assert set(dead_letters(ev, NAME)) == {"t2"}


def test_a_batch_too_large_is_split_and_all_delivered(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer
) -> None:
    amplitude.max_events = 3
    ev = start(eventd, amplitude)
    send(
        ev,
        [
            {"type": "track", "event": "A", "userId": "user-1", "messageId": f"m{i}"}
            for i in range(10)
        ],
    )
    assert amplitude.deliveries == {f"m{i}": 1 for i in range(10)}
    assert 413 in amplitude.statuses()
    assert dead_letters(ev, NAME) == {}


def test_a_wrong_api_key_dead_letters_with_a_clear_reason_and_no_secret(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer
) -> None:
    ev = start(eventd, amplitude, api_key="wrong-key-s3cret")
    send(ev, [{"type": "track", "event": "A", "userId": "user-1", "messageId": "k1"}])
    assert amplitude.deliveries == {}
    reason = dead_letters(ev, NAME)["k1"]
    assert "Amplitude refused the API key" in reason and "settings.api_key" in reason
    assert "wrong-key-s3cret" not in reason and "wrong-key-s3cret" not in ev.log()


def test_groups_without_a_group_type_are_skipped_and_counted(
    eventd: Callable[..., EventdProcess], amplitude: AmplitudeServer
) -> None:
    ev = start(eventd, amplitude)
    send(
        ev,
        [
            {"type": "group", "userId": "user-1", "groupId": "acme", "messageId": "g1"},
            {"type": "track", "event": "A", "userId": "user-1", "messageId": "t1"},
        ],
    )
    assert amplitude.deliveries == {"t1": 1}
    assert skipped(ev, NAME) == {SKIP_GROUP.reason: 1}
