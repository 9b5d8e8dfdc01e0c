"""The mixpanel destination: its mapping, its reading of Mixpanel's answers (against the
contract server in-process) and eventd end to end into the contract server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.mixpanel import Mixpanel
from eventd_plugins.mixpanel.mapping import (
    ENGAGE,
    GROUPS,
    IMPORT,
    SKIP_ALIAS,
    SKIP_GROUP,
    SKIP_IDENTIFY,
    Options,
    insert_id,
    map_message,
)

from eventd import OK, Event, Permanent, Retry
from eventd.config import ConfigError
from eventd.normalize import Envelope, normalize
from tests.contract.fixtures import dead_letters, destination, send, skipped
from tests.contract.mixpanel_server import MixpanelServer
from tests.harness import EventdProcess

NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36"
)
OPTIONS = Options(project_token="tok")


def stored(**raw: Any) -> dict[str, Any]:
    """A message as eventd stores it (normalized, timestamps filled in)."""
    return normalize(raw, None, Envelope(received_at=NOW))


def events(*messages: dict[str, Any]) -> list[Event]:
    return [Event(seq, "app", NOW_MS, m, len(orjson.dumps(m))) for seq, m in enumerate(messages, 1)]


# -- mapping -------------------------------------------------------------------------


def test_track_maps_ids_time_context_and_properties() -> None:
    message = stored(
        type="track",
        event="Song Played",
        userId="u-1",
        anonymousId="anon-1",
        messageId="m-1",
        timestamp="2024-05-01T12:00:00.250Z",
        properties={"title": "Blue", "distinct_id": "spoofed"},
        context={
            "ip": "203.0.113.9",
            "userAgent": CHROME_MAC,
            "page": {"url": "https://ex.com/a", "referrer": "https://ref.com/"},
            "os": {"name": "macOS", "version": "14.1"},
            "screen": {"width": 1440, "height": 900},
            "campaign": {"source": "news", "medium": "email", "name": "spring"},
            "library": {"name": "analytics.js", "version": "5.2.0"},
        },
    )
    assert map_message(message, NOW_MS, OPTIONS) == {
        IMPORT: {
            "event": "Song Played",
            "properties": {
                "ip": "203.0.113.9",
                "$current_url": "https://ex.com/a",
                "$referrer": "https://ref.com/",
                "$os": "macOS",
                "$os_version": "14.1",
                "$browser": "Chrome",
                "$browser_version": "120.0.6099.109",
                "$screen_width": 1440,
                "$screen_height": 900,
                "utm_source": "news",
                "utm_medium": "email",
                "utm_campaign": "spring",
                "$lib_version": "5.2.0",
                "mp_lib": "eventd: analytics.js",
                "$source": "eventd",
                "title": "Blue",
                # the ids win over a property of the same name: dedup and identity rest on them
                "distinct_id": "u-1",
                "time": int(datetime(2024, 5, 1, 12, 0, 0, 250000, UTC).timestamp() * 1000),
                "$insert_id": "m-1",
                "$user_id": "u-1",
                "$device_id": "anon-1",
            },
        }
    }


def test_anonymous_track_uses_anonymous_id_and_user_agent_os() -> None:
    message = stored(
        type="track", event="X", anonymousId="anon-2", context={"userAgent": CHROME_MAC}
    )
    mapped = map_message(message, NOW_MS, OPTIONS)
    assert isinstance(mapped, dict)
    props = mapped[IMPORT]["properties"]
    assert (props["distinct_id"], props["$device_id"], props["$os"]) == (
        "anon-2",
        "anon-2",
        "Mac OS X",
    )
    assert "$user_id" not in props


@pytest.mark.parametrize(
    ("user_agent", "browser", "version", "os"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "Firefox",
            "121.0",
            "Windows",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            "Microsoft Edge",
            "120.0.2210.91",
            "Windows",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.6099.144 Mobile Safari/537.36",
            "Chrome",
            "120.0.6099.144",
            "Android",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
            "Chrome iOS",
            "120.0.6099.119",
            "iOS",
        ),
        ("curl/8.4.0", None, None, None),
    ],
)
def test_browser_and_os_come_from_the_user_agent(
    user_agent: str, browser: str | None, version: str | None, os: str | None
) -> None:
    message = stored(type="track", event="X", userId="u", context={"userAgent": user_agent})
    mapped = map_message(message, NOW_MS, OPTIONS)
    assert isinstance(mapped, dict)
    props = mapped[IMPORT]["properties"]
    assert (props.get("$browser"), props.get("$browser_version"), props.get("$os")) == (
        browser,
        version,
        os,
    )


def test_insert_id_is_the_message_id_when_mixpanel_takes_it_else_a_stable_uuid() -> None:
    assert (
        insert_id("0b6bd5a2-2d5b-4a47-9d8e-6f0a1c2b3d4e") == "0b6bd5a2-2d5b-4a47-9d8e-6f0a1c2b3d4e"
    )
    browser_id = "ajs-next-1c9b0e0a4d2c7f6e5b4a39281706f5e4"  # 41 characters
    derived = insert_id(browser_id)
    assert derived == insert_id(browser_id) != browser_id  # stable: a resend dedups
    assert len(derived) == 36 and set(derived) <= set("0123456789abcdef-")
    assert insert_id("has spaces") != insert_id("has_spaces")


@pytest.mark.parametrize(
    ("template", "raw", "expected"),
    [
        (None, {"type": "page", "name": "Pricing"}, "Viewed Pricing Page"),
        (None, {"type": "screen", "name": "Settings"}, "Viewed Settings Screen"),
        (None, {"type": "page"}, "Loaded a Page"),
        (None, {"type": "screen"}, "Loaded a Screen"),
        (
            "Viewed {category} {name}",
            {"type": "page", "name": "A", "category": "Docs"},
            "Viewed Docs A",
        ),
        ("Viewed {category} {name}", {"type": "page", "name": "A"}, "Loaded a Page"),
        ("$mp_web_page_view", {"type": "page", "name": "A"}, "$mp_web_page_view"),
    ],
)
def test_page_and_screen_event_names(
    template: str | None, raw: dict[str, Any], expected: str
) -> None:
    options = Options(project_token="tok", **({"page_event_name": template} if template else {}))
    message = stored(userId="u", properties={"path": "/p"}, **raw)
    mapped = map_message(message, NOW_MS, options)
    assert isinstance(mapped, dict)
    assert mapped[IMPORT]["event"] == expected
    assert mapped[IMPORT]["properties"]["path"] == "/p"


def test_identify_sets_the_profile_and_links_the_anonymous_id() -> None:
    message = stored(
        type="identify",
        userId="u-1",
        anonymousId="anon-1",
        messageId="m-9",
        traits={"email": "a@ex.com", "firstName": "Ada", "lastName": "L", "plan": "pro"},
        context={"ip": "198.51.100.7"},
    )
    mapped = map_message(message, NOW_MS, OPTIONS)
    assert isinstance(mapped, dict)
    assert mapped[ENGAGE] == {
        "$token": "tok",
        "$distinct_id": "u-1",
        "$ip": "198.51.100.7",
        "$set": {
            "$email": "a@ex.com",
            "$first_name": "Ada",
            "$last_name": "L",
            "$name": "Ada L",
            "plan": "pro",
        },
    }
    link = mapped[IMPORT]
    assert link["event"] == "$identify"
    assert {
        k: link["properties"][k]
        for k in ("distinct_id", "$identified_id", "$anon_id", "$insert_id")
    } == {
        "distinct_id": "u-1",
        "$identified_id": "u-1",
        "$anon_id": "anon-1",
        "$insert_id": "m-9",
    }


def test_identify_without_anonymous_id_only_sets_and_without_traits_is_skipped() -> None:
    mapped = map_message(stored(type="identify", userId="u", traits={"a": 1}), NOW_MS, OPTIONS)
    assert isinstance(mapped, dict) and set(mapped) == {ENGAGE}
    assert map_message(stored(type="identify", userId="u"), NOW_MS, OPTIONS) == SKIP_IDENTIFY


def test_group_needs_a_group_key() -> None:
    message = stored(type="group", userId="u-1", groupId="acme", traits={"plan": "gold"})
    assert map_message(message, NOW_MS, OPTIONS) == SKIP_GROUP
    mapped = map_message(message, NOW_MS, Options(project_token="tok", group_key="company"))
    assert mapped == {
        ENGAGE: {"$token": "tok", "$distinct_id": "u-1", "$union": {"company": ["acme"]}},
        GROUPS: {
            "$token": "tok",
            "$group_key": "company",
            "$group_id": "acme",
            "$set": {"plan": "gold"},
        },
    }


def test_track_in_a_group_carries_the_group_key_property() -> None:
    message = stored(type="track", event="E", userId="u", context={"groupId": "acme"})
    mapped = map_message(message, NOW_MS, Options(project_token="tok", group_key="company"))
    assert isinstance(mapped, dict) and mapped[IMPORT]["properties"]["company"] == "acme"


@pytest.mark.parametrize(
    ("alias_event", "expected"),
    [
        ("$create_alias", {"distinct_id": "anon-1", "alias": "u-1"}),
        ("$merge", {"$distinct_ids": ["anon-1", "u-1"]}),
    ],
)
def test_alias(alias_event: str, expected: dict[str, Any]) -> None:
    message = stored(type="alias", userId="u-1", previousId="anon-1", messageId="m-a")
    mapped = map_message(message, NOW_MS, Options(project_token="tok", alias_event=alias_event))
    assert isinstance(mapped, dict)
    assert mapped[IMPORT]["event"] == alias_event
    props = mapped[IMPORT]["properties"]
    assert props == {**expected, "time": props["time"], "$insert_id": "m-a"}


def test_alias_event_none_skips_alias() -> None:
    message = stored(type="alias", userId="u-1", previousId="anon-1")
    assert (
        map_message(message, NOW_MS, Options(project_token="tok", alias_event="none")) == SKIP_ALIAS
    )


# -- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "destinations.mp.settings: 'project_token' is a required property"),
        ({"project_token": "t0ps3cret", "region": "asia"}, "settings.region = 'asia'"),
        (
            {
                "project_token": "t0ps3cret",
                "service_account_username": "sa",
                "service_account_secret": "s3cr3tsa",
            },
            "'project_id' is a dependency of 'service_account_username'",
        ),
        (
            {"project_token": "t0ps3cret", "alias_event": "$merge"},
            "$merge only from a service account",
        ),
        (
            {"project_token": "t0ps3cret", "page_event_name": "Viewed {title}"},
            "unknown placeholder {title}",
        ),
        ({"project_token": "t0ps3cret", "tokn": "x"}, "'tokn' was unexpected"),
    ],
)
def test_settings_errors_name_the_key_and_never_show_a_secret(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Mixpanel.validate_settings("mp", settings)
    assert expected in str(err.value)
    assert "t0ps3cret" not in str(err.value) and "s3cr3tsa" not in str(err.value)


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("us", "https://api.mixpanel.com"),
        ("eu", "https://api-eu.mixpanel.com"),
        ("in", "https://api-in.mixpanel.com"),
    ],
)
async def test_region_picks_the_host_and_endpoint_overrides_it(region: str, url: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert Mixpanel("mp", {"project_token": "t", "region": region}, session).endpoint == url
        settings = {"project_token": "t", "region": region, "endpoint": "http://proxy:1/"}
        assert Mixpanel("mp", settings, session).endpoint == "http://proxy:1"


# -- answers, against the contract server in-process ---------------------------------------

ServerFactory = Callable[[Any], Awaitable[Any]]


@pytest.fixture
async def api(aiohttp_server: ServerFactory) -> MixpanelServer:
    server = MixpanelServer()
    started = await aiohttp_server(server.app())
    server.port = started.port
    return server


async def deliver(api: MixpanelServer, batch: list[Event], **settings: Any) -> list[Any]:
    config = {"project_token": api.project_token, "endpoint": api.url, **settings}
    async with aiohttp.ClientSession() as session:
        return list(await Mixpanel("mp", config, session).deliver(batch))


def service_account(api: MixpanelServer) -> dict[str, Any]:
    return {
        "service_account_username": api.service_account_username,
        "service_account_secret": api.service_account_secret,
        "project_id": api.project_id,
    }


async def test_import_authenticates_with_the_token_or_the_service_account(
    api: MixpanelServer,
) -> None:
    batch = events(stored(type="track", event="A", userId="u", messageId="a1"))
    assert await deliver(api, batch) == [OK]
    assert await deliver(api, batch, **service_account(api)) == [OK]
    assert [(r.auth, r.query) for r in api.requests] == [
        ("project_token", {"strict": "1"}),
        ("service_account", {"strict": "1", "project_id": api.project_id}),
    ]


async def test_failed_records_fail_only_those_events(api: MixpanelServer) -> None:
    batch = events(
        stored(type="track", event="A", userId="u", messageId="ok-1"),
        stored(type="track", event="A", userId="null", messageId="bad-id"),
        stored(
            type="track",
            event="A",
            userId="u",
            messageId="bad-time",
            timestamp="1970-01-01T00:00:00Z",
        ),
        stored(type="track", event="A", userId="u", messageId="ok-2"),
    )
    outcomes = await deliver(api, batch)
    assert outcomes[0] == outcomes[3] == OK
    assert isinstance(outcomes[1], Permanent) and "placeholder" in outcomes[1].reason
    assert isinstance(outcomes[2], Permanent) and "properties.time" in outcomes[2].reason
    assert api.insert_ids() == {"ok-1": 1, "ok-2": 1}


async def test_413_splits_until_the_requests_fit(api: MixpanelServer) -> None:
    api.max_events = 2
    batch = events(
        *(stored(type="track", event="A", userId="u", messageId=f"m{i}") for i in range(5))
    )
    assert await deliver(api, batch) == [OK] * 5
    assert api.insert_ids() == {f"m{i}": 1 for i in range(5)}
    assert api.statuses("/import").count(413) >= 2


async def test_a_429_is_retried_after_the_apis_wait(api: MixpanelServer) -> None:
    api.fail_next("/import", 429, headers={"Retry-After": "7"})
    outcome = (await deliver(api, events(stored(type="track", event="A", userId="u"))))[0]
    assert isinstance(outcome, Retry) and outcome.after == 7.0 and "429" in outcome.reason


async def test_a_profile_update_refused_by_engage_is_permanent(api: MixpanelServer) -> None:
    batch = events(stored(type="identify", userId="u", traits={"a": 1}))
    [outcome] = await deliver(api, batch, project_token="not-the-token")
    assert isinstance(outcome, Permanent) and "/engage rejected the update" in outcome.reason
    assert "not-the-token" not in outcome.reason


async def test_an_identify_waits_for_its_slowest_part(api: MixpanelServer) -> None:
    api.fail_next("/engage", 503)
    batch = events(
        stored(type="identify", userId="u", anonymousId="anon-1", traits={"a": 1}, messageId="i1")
    )
    [outcome] = await deliver(api, batch)
    assert isinstance(outcome, Retry)  # the $identify landed; the $set is resent
    assert api.insert_ids() == {"i1": 1} and api.profiles == []


async def test_wrong_service_account_secret_is_permanent_and_not_repeated(
    api: MixpanelServer,
) -> None:
    settings = {**service_account(api), "service_account_secret": "wrong-s3cret"}
    [outcome] = await deliver(api, events(stored(type="track", event="A", userId="u")), **settings)
    assert isinstance(outcome, Permanent)
    assert "HTTP 401" in outcome.reason and "service_account_username" in outcome.reason
    assert "wrong-s3cret" not in outcome.reason


# -- end to end: eventd into the contract server ----------------------------------------


# The `mixpanel` fixture (the contract server on a thread) is in tests/contract/fixtures.py.
NAME = "mp"


def start(
    eventd: Callable[..., EventdProcess], server: MixpanelServer, **settings: Any
) -> EventdProcess:
    base = {"project_token": server.project_token, "endpoint": server.url}
    return eventd({"destinations": {NAME: destination("mixpanel", {**base, **settings})}})


def test_every_call_type_reaches_mixpanel(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    ev = start(eventd, mixpanel, group_key="company")
    send(
        ev,
        [
            {
                "type": "track",
                "event": "Signed Up",
                "userId": "u-1",
                "messageId": "t1",
                "properties": {"plan": "pro"},
            },
            {"type": "page", "name": "Pricing", "anonymousId": "anon-1", "messageId": "p1"},
            {"type": "screen", "name": "Home", "userId": "u-1", "messageId": "s1"},
            {
                "type": "identify",
                "userId": "u-1",
                "anonymousId": "anon-1",
                "messageId": "i1",
                "traits": {"email": "a@ex.com"},
            },
            {
                "type": "group",
                "userId": "u-1",
                "groupId": "acme",
                "messageId": "g1",
                "traits": {"name": "Acme"},
            },
            {"type": "alias", "userId": "u-1", "previousId": "anon-1", "messageId": "a1"},
        ],
    )
    assert mixpanel.insert_ids() == {"t1": 1, "p1": 1, "s1": 1, "i1": 1, "a1": 1}
    names = {e["properties"]["$insert_id"]: e["event"] for e in mixpanel.imported}
    assert names == {
        "t1": "Signed Up",
        "p1": "Viewed Pricing Page",
        "s1": "Viewed Home Screen",
        "i1": "$identify",
        "a1": "$create_alias",
    }
    assert [p.get("$set") or p.get("$union") for p in mixpanel.profiles] == [
        {"$email": "a@ex.com"},
        {"company": ["acme"]},
    ]
    assert mixpanel.group_profiles == [
        {
            "$token": mixpanel.project_token,
            "$group_key": "company",
            "$group_id": "acme",
            "$set": {"name": "Acme"},
        }
    ]
    assert dead_letters(ev, NAME) == {} and skipped(ev, NAME) == {}


def test_only_the_events_mixpanel_refuses_are_dead_lettered(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    ev = start(eventd, mixpanel)
    send(
        ev,
        [
            {"type": "track", "event": "A", "userId": "u-1", "messageId": "good-1"},
            {"type": "track", "event": "A", "userId": "undefined", "messageId": "bad-id"},
            {
                "type": "track",
                "event": "A",
                "userId": "u-1",
                "messageId": "bad-time",
                "timestamp": "1970-01-01T00:00:05Z",
            },
            {"type": "track", "event": "A", "userId": "u-2", "messageId": "good-2"},
        ],
    )
    assert mixpanel.insert_ids() == {"good-1": 1, "good-2": 1}
    dead = dead_letters(ev, NAME)
    assert set(dead) == {"bad-id", "bad-time"}
    assert "'properties.distinct_id' is invalid" in dead["bad-id"]
    assert "'properties.time' is invalid" in dead["bad-time"]


def test_throttling_and_outages_are_retried_until_delivered(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    mixpanel.fail_next("/import", 503)
    mixpanel.fail_next("/import", 429, headers={"Retry-After": "1"})
    ev = start(eventd, mixpanel, **service_account(mixpanel), alias_event="$merge")
    send(
        ev,
        [
            {"type": "track", "event": "A", "userId": "u-1", "messageId": "r1"},
            {"type": "alias", "userId": "u-1", "previousId": "anon-1", "messageId": "r2"},
        ],
    )
    assert mixpanel.statuses("/import") == [503, 429, 200]
    assert mixpanel.insert_ids() == {"r1": 1, "r2": 1}
    assert {r.auth for r in mixpanel.requests} == {"service_account"}
    assert dead_letters(ev, NAME) == {}


def test_a_batch_too_large_is_split_and_all_delivered(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    mixpanel.max_events = 3
    ev = start(eventd, mixpanel)
    send(
        ev,
        [{"type": "track", "event": "A", "userId": "u", "messageId": f"m{i}"} for i in range(10)],
    )
    assert mixpanel.insert_ids() == {f"m{i}": 1 for i in range(10)}
    assert 413 in mixpanel.statuses("/import")
    assert dead_letters(ev, NAME) == {}


def test_bad_credentials_dead_letter_with_a_clear_reason_and_no_secret(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    ev = start(eventd, mixpanel, project_token="wrong-token-s3cret")
    send(ev, [{"type": "track", "event": "A", "userId": "u", "messageId": "c1"}])
    assert mixpanel.imported == []
    reason = dead_letters(ev, NAME)["c1"]
    assert "refused the credentials (HTTP 401" in reason and "project_token" in reason
    assert "wrong-token-s3cret" not in reason and "wrong-token-s3cret" not in ev.log()


def test_calls_mixpanel_cannot_take_are_skipped_and_counted(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    ev = start(eventd, mixpanel, alias_event="none")
    send(
        ev,
        [
            {"type": "group", "userId": "u", "groupId": "acme", "messageId": "g1"},
            {"type": "group", "userId": "u", "groupId": "beta", "messageId": "g2"},
            {"type": "alias", "userId": "u", "previousId": "anon", "messageId": "a1"},
            {"type": "identify", "userId": "u", "messageId": "i1"},
            {"type": "track", "event": "A", "userId": "u", "messageId": "t1"},
        ],
    )
    assert mixpanel.insert_ids() == {"t1": 1}
    assert mixpanel.profiles == mixpanel.group_profiles == []
    assert skipped(ev, NAME) == {
        SKIP_GROUP.reason: 2,
        SKIP_ALIAS.reason: 1,
        SKIP_IDENTIFY.reason: 1,
    }
    assert dead_letters(ev, NAME) == {}
