"""The intercom destination: mapping and errors, then eventd end to end into an Intercom server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eventd_plugins.intercom import Intercom
from eventd_plugins.intercom.api import Reply, failure
from eventd_plugins.intercom.mapping import (
    company_body,
    contact_body,
    epoch_seconds,
    event_body,
    event_metadata,
)

from eventd import Permanent, Retry, Skip
from eventd.config import ConfigError
from tests.contract.fixtures import counters, dead_letters, destination, post, skipped
from tests.contract.intercom_server import IntercomServer
from tests.harness import EventdProcess, running

TS = "2026-03-01T12:00:00.000Z"
TS_SECONDS = 1772366400

# -- mapping ------------------------------------------------------------------------------


def test_identify_is_a_contact() -> None:
    body = contact_body(
        {
            "type": "identify",
            "userId": "u1",
            "timestamp": TS,
            "traits": {
                "email": "ada@example.com",
                "firstName": "Ada",
                "lastName": "Lovelace",
                "phone": "+441234",
                "createdAt": "2025-01-01T00:00:00Z",
                "plan": "pro",
                "logins": 3,
                "vip": True,
                "address": {"city": "London"},  # no flat place for it
                "tags": ["a"],
                "bad.key$": "x",
                "bio": "b" * 300,
            },
        }
    )
    assert body == {
        "role": "user",
        "external_id": "u1",
        "email": "ada@example.com",
        "phone": "+441234",
        "name": "Ada Lovelace",
        "signed_up_at": 1735689600,
        "last_seen_at": TS_SECONDS,
        "custom_attributes": {
            "plan": "pro",
            "logins": 3,
            "vip": True,
            "bad_key_": "x",
            "bio": "b" * 255,
        },
    }


def test_identify_by_email_only_and_anonymous_identify() -> None:
    body = contact_body({"type": "identify", "anonymousId": "a", "traits": {"email": "e@x.io"}})
    assert body == {"role": "user", "email": "e@x.io"}
    skipped = contact_body({"type": "identify", "anonymousId": "a", "traits": {"name": "N"}})
    assert isinstance(skipped, Skip) and "anonymous identify" in skipped.reason


def test_track_is_a_data_event() -> None:
    body = event_body(
        {
            "type": "track",
            "event": "Order Placed",
            "userId": "u1",
            "timestamp": TS,
            "properties": {"revenue": 12.5, "currency": "EUR", "email": "x@y.z", "sku": "s1"},
        }
    )
    assert body == {
        "event_name": "Order Placed",
        "created_at": TS_SECONDS,
        "user_id": "u1",
        "metadata": {"price": {"amount": 1250, "currency": "EUR"}, "sku": "s1"},
    }
    by_email = event_body(
        {
            "type": "track",
            "event": "E",
            "anonymousId": "a",
            "timestamp": TS,
            "context": {"traits": {"email": "e@x.io"}},
        }
    )
    assert by_email == {"event_name": "E", "created_at": TS_SECONDS, "email": "e@x.io"}
    anonymous = event_body({"type": "track", "event": "E", "anonymousId": "a"})
    assert isinstance(anonymous, Skip) and "anonymous track" in anonymous.reason


def test_metadata_keeps_10_flat_keys_deterministically() -> None:
    props: dict[str, Any] = {f"k{i:02d}": i for i in range(15)}
    props |= {
        "revenue": 3,
        "nested": {"a": 1},
        "link": {"url": "https://x.test", "value": "X"},
        "list": [1],
        "none": None,
    }
    forward = event_metadata(props)
    assert forward == event_metadata(dict(reversed(props.items())))  # not the client's order
    assert list(forward) == ["price", *(f"k{i:02d}" for i in range(9))]
    assert forward["price"] == {"amount": 300, "currency": "usd"}  # Segment's default currency
    assert event_metadata({"link": {"url": "https://x.test", "value": "X"}}) == {
        "link": {"url": "https://x.test", "value": "X"}
    }


def test_group_is_a_company() -> None:
    body = company_body(
        {
            "type": "group",
            "groupId": "g1",
            "traits": {
                "name": "Acme",
                "employees": 30,
                "plan": "enterprise",
                "monthly_spend": 99.5,
                "website": "https://acme.test",
                "industry": "Tools",
                "createdAt": 1735689600000,
                "tier": "gold",
            },
        }
    )
    assert body == {
        "company_id": "g1",
        "name": "Acme",
        "plan": "enterprise",
        "website": "https://acme.test",
        "industry": "Tools",
        "size": 30,
        "monthly_spend": 99.5,
        "remote_created_at": 1735689600,  # milliseconds read as such
        "custom_attributes": {"tier": "gold"},
    }


def test_epoch_seconds() -> None:
    assert epoch_seconds("2025-01-01T00:00:00Z") == 1735689600
    assert epoch_seconds("2025-01-01T01:00:00+01:00") == 1735689600
    assert epoch_seconds(1735689600) == 1735689600
    assert epoch_seconds(1735689600123) == 1735689600
    assert epoch_seconds("yesterday") is None and epoch_seconds(True) is None


def test_error_bodies_become_outcomes() -> None:
    def reply(status: int, code: str, message: str) -> Reply:
        return Reply(status, {"type": "error.list", "errors": [{"code": code, "message": message}]})

    auth = failure(reply(401, "unauthorized", "Access Token Invalid"), "creating a contact")
    assert auth == Permanent(
        "Intercom rejected the access token while creating a contact"
        " (401 unauthorized: Access Token Invalid)"
    )
    assert isinstance(failure(reply(403, "forbidden", "no"), "x"), Permanent)
    assert isinstance(failure(reply(503, "service_unavailable", "later"), "x"), Retry)
    bad = failure(reply(400, "parameter_not_found", "Custom attribute 'z' does not exist"), "x")
    assert bad == Permanent(
        "Intercom answered 400 while x: parameter_not_found: Custom attribute 'z' does not exist"
    )


def test_settings_are_validated_and_the_token_is_not_shown() -> None:
    Intercom.validate_settings("i", {"access_token": "tok"})
    with pytest.raises(ConfigError, match="'access_token' is a required property"):
        Intercom.validate_settings("i", {})
    with pytest.raises(ConfigError, match=r"settings\.access_token = \*\*\*"):
        Intercom.validate_settings("i", {"access_token": ""})
    with pytest.raises(ConfigError, match=r"settings\.api_version"):
        Intercom.validate_settings("i", {"access_token": "t", "api_version": "latest"})
    with pytest.raises(ConfigError, match=r"settings\.region"):
        Intercom.validate_settings("i", {"access_token": "t", "region": "mars"})


# -- end to end ---------------------------------------------------------------------------


# The `intercom` fixture (the contract server on a thread) is in tests/contract/fixtures.py.
NAME = "i"


def start(
    eventd: Callable[..., EventdProcess], server: IntercomServer, **extra: Any
) -> EventdProcess:
    base = {"access_token": server.token, "endpoint": server.url}
    return eventd({"destinations": {NAME: destination("intercom", {**base, **extra})}})


def test_identify_track_group_end_to_end(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    ev = start(eventd, intercom, api_version="2.10")
    post(
        ev,
        [
            {
                "type": "identify",
                "userId": "u1",
                "timestamp": TS,
                "traits": {
                    "email": "ada@example.com",
                    "name": "Ada",
                    "plan": "pro",
                    "createdAt": "2025-01-01T00:00:00Z",
                },
            },
            {
                "type": "track",
                "event": "Order Placed",
                "userId": "u1",
                "timestamp": TS,
                "properties": {
                    "revenue": 12.5,
                    "currency": "EUR",
                    **{f"p{i:02d}": i for i in range(12)},
                },
            },
            {
                "type": "group",
                "userId": "u1",
                "groupId": "g1",
                "traits": {"name": "Acme", "employees": 30, "tier": "gold"},
            },
            {"type": "page", "userId": "u1", "name": "Home"},
            {"type": "screen", "userId": "u1", "name": "Home"},
            {"type": "alias", "userId": "u1", "previousId": "a1"},
        ],
    )
    ev.drain()
    # The same user again: Intercom answers 409 with the id; eventd updates that contact.
    post(ev, [{"type": "identify", "userId": "u1", "traits": {"name": "Ada L.", "logins": 4}}])
    ev.drain()

    assert dead_letters(ev, NAME) == {}
    assert intercom.problems == []
    contact = intercom.contact("u1")
    assert len(intercom.contacts) == 1
    assert (contact["email"], contact["name"], contact["signed_up_at"]) == (
        "ada@example.com",
        "Ada L.",
        1735689600,
    )
    assert contact["custom_attributes"] == {"plan": "pro", "logins": 4}
    assert intercom.statuses("/contacts") == [200, 409]
    assert intercom.statuses(f"/contacts/{contact['id']}") == [200]  # the PUT

    (event,) = intercom.events
    assert (event["event_name"], event["created_at"], event["user_id"]) == (
        "order placed",
        TS_SECONDS,
        "u1",
    )
    assert event["metadata"] == {
        "price": {"amount": 1250, "currency": "EUR"},
        **{f"p{i:02d}": i for i in range(9)},
    }
    (company,) = intercom.companies.values()
    assert (company["company_id"], company["name"], company["size"]) == ("g1", "Acme", 30)
    assert company["custom_attributes"] == {"tier": "gold"}
    assert intercom.attached == {(contact["id"], company["id"])}
    assert {c.version for c in intercom.calls} == {"2.10"}
    assert skipped(ev, NAME) == {
        "page calls are not supported by Intercom": 1.0,
        "screen calls are not supported by Intercom": 1.0,
        "alias calls are not supported by Intercom": 1.0,
    }


def test_failures_are_per_event(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    ev = start(eventd, intercom, contact_grace_seconds=0)
    post(
        ev,
        [
            {
                "type": "identify",
                "userId": "u2",
                "messageId": "bad_attr",
                "traits": {"favourite_color": "teal"},
            },
            {"type": "identify", "userId": "u3", "messageId": "ok1", "traits": {"vip": True}},
            {"type": "track", "userId": "u3", "event": "Logged In", "messageId": "ok2"},
            {"type": "track", "userId": "u404", "event": "Logged In", "messageId": "unknown"},
            {"type": "group", "userId": "u405", "groupId": "g9", "messageId": "no_contact"},
            {"type": "track", "anonymousId": "anon", "event": "Browsed", "messageId": "anon"},
        ],
    )
    ev.drain()
    assert dead_letters(ev, NAME) == {
        "bad_attr": "Intercom answered 400 while creating a contact: parameter_not_found:"
        " Custom attribute 'favourite_color' does not exist",
        "unknown": "Intercom has no contact with user_id=u404 (not_found: User Not Found):"
        " identify the user first, then redrive",
        "no_contact": "Intercom has no contact with external_id=u405 to attach: identify the"
        " user first, then redrive",
    }
    assert [e["contact"] for e in intercom.events] == [intercom.contact("u3")["id"]]
    assert intercom.contact("u3")["custom_attributes"] == {"vip": True}
    assert [c["company_id"] for c in intercom.companies.values()] == ["g9"]
    assert skipped(ev, NAME) == {"anonymous track: Intercom needs a userId or an email": 1.0}


def test_a_track_waits_for_an_identify_in_flight(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    ev = start(eventd, intercom)  # contact_grace_seconds: 60 by default
    post(ev, [{"type": "track", "userId": "u5", "event": "Signed Up", "messageId": "t"}])
    intercom.wait_for(lambda s: 404 in s.statuses("/events"))
    post(ev, [{"type": "identify", "userId": "u5", "messageId": "i"}])
    ev.drain()
    assert dead_letters(ev, NAME) == {}
    statuses = intercom.statuses("/events")
    assert statuses[0] == 404 and statuses[-1] == 202 and statuses.count(202) == 1
    assert [e["contact"] for e in intercom.events] == [intercom.contact("u5")["id"]]


def test_a_track_before_its_identify_in_one_batch_does_not_hold_it(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    # Server-side code often tracks "Signed Up" before it identifies the new user. The
    # track waits for its contact; the identify after it must not wait behind it.
    ev = start(eventd, intercom)  # contact_grace_seconds: 60, far longer than this test
    post(
        ev,
        [
            {"type": "track", "userId": "u6", "event": "Signed Up", "messageId": "t"},
            {"type": "group", "userId": "u6", "groupId": "g6", "messageId": "g"},
            {"type": "identify", "userId": "u6", "traits": {"email": "u6@x.io"}, "messageId": "i"},
        ],
    )
    ev.drain()
    assert dead_letters(ev, NAME) == {}
    contact = intercom.contact("u6")
    assert intercom.statuses("/events") == [404, 202]  # tried again in the same delivery
    assert [e["contact"] for e in intercom.events] == [contact["id"]]
    (company,) = intercom.companies.values()
    assert intercom.attached == {(contact["id"], company["id"])}
    retried = [
        v for labels, v in counters(ev, "eventd_retried_events") if labels["destination"] == NAME
    ]
    assert sum(retried) == 0  # no backoff: nothing went back to the dispatcher


def test_429_waits_until_x_ratelimit_reset(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    ev = start(eventd, intercom)
    intercom.script.append("429")
    post(ev, [{"type": "identify", "userId": "u6", "traits": {"name": "Six"}}])
    ev.drain()
    assert intercom.statuses("/contacts") == [429, 200]
    first, second = (c for c in intercom.calls if c.path == "/contacts")
    # X-RateLimit-Reset was at least 1 s ahead; the 50 ms backoff alone would be too early.
    assert second.at - first.at >= 0.95
    assert intercom.contact("u6")["name"] == "Six"
    assert dead_letters(ev, NAME) == {}


def test_remaining_zero_holds_back_requests(eventd: Callable[..., EventdProcess]) -> None:
    with running(IntercomServer(rate_limit=3, window=1)) as intercom:
        ev = start(eventd, intercom)
        post(ev, [{"type": "identify", "userId": f"r{i}"} for i in range(8)])
        ev.drain()
        assert sorted(c["external_id"] for c in intercom.contacts.values()) == [
            f"r{i}" for i in range(8)
        ]
        # Requests already in flight when the window ran out get a 429; the others are
        # held back by X-RateLimit-Remaining: 0. Ignoring it would cost 5 or more.
        assert intercom.statuses("/contacts").count(429) <= 3
        assert dead_letters(ev, NAME) == {}


def test_a_bad_token_is_permanent_and_never_logged(
    eventd: Callable[..., EventdProcess], intercom: IntercomServer
) -> None:
    ev = start(eventd, intercom, access_token="tok_wrong_0123456789")
    post(
        ev,
        [
            {"type": "identify", "userId": "u7", "messageId": "i"},
            {"type": "track", "userId": "u7", "event": "E", "messageId": "t"},
        ],
    )
    ev.drain()
    dead = dead_letters(ev, NAME)
    assert dead == {
        "i": "Intercom rejected the access token while creating a contact"
        " (401 unauthorized: Access Token Invalid)",
        "t": "Intercom rejected the access token while submitting an event"
        " (401 unauthorized: Access Token Invalid)",
    }
    assert intercom.contacts == {} and intercom.events == []
    assert "tok_wrong_0123456789" not in ev.log()


def test_requests_go_to_the_region_host() -> None:
    eu = Intercom("i", {"access_token": "t", "region": "eu"}, session=None)  # type: ignore[arg-type]
    assert eu.api.base == "https://api.eu.intercom.io"
    default = Intercom("i", {"access_token": "t"}, session=None)  # type: ignore[arg-type]
    assert default.api.base == "https://api.intercom.io"
