"""Cloud-app sources in process over a real socket: POST /v1/webhooks/{write_key} with
notifications signed as Intercom, Stripe and a generic sender sign them; what is
stored (by messageId), what is answered, what is counted; settings errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomli_w
from aiohttp import web
from aiohttp.test_utils import TestClient
from eventd_plugins.mixpanel.mapping import insert_id
from prometheus_client.parser import text_string_to_metric_families

from eventd import hookimpl
from eventd.app import create_app
from eventd.cli import main
from eventd.config import ConfigError, parse_config
from eventd.plugins import check_sources, plugin_manager, source_types
from eventd.source import Message, Source
from tests import webhook_fixtures as fx
from tests.contract.fixtures import dead_letters, destination, post, skipped
from tests.contract.mixpanel_server import MixpanelServer
from tests.harness import EventdProcess, basic

Client = TestClient[web.Request, web.Application]
TOKEN = "adm_sources_test"
KEYS = {
    "web": "wk_web_src",
    "intercom": "wk_intercom_3f9a",
    "billing": "wk_billing_77c2",
    "crm": "wk_crm_51d0",
    "open": "wk_open_0b7e",
}
CRM_SECRET = "crm-hmac-secret-9d8c"


def sources_table(tmp_path: Path) -> dict[str, Any]:
    plan = tmp_path / "billing-plan.json"
    plan.write_text(json.dumps({"track": {"Charge Succeeded": {}, "Order Refunded": {}}}))
    return {
        "web": {"write_key": KEYS["web"]},
        "intercom": {
            "type": "intercom",
            "write_key": KEYS["intercom"],
            "client_secret": fx.INTERCOM_SECRET,
        },
        "billing": {
            "type": "stripe",
            "write_key": KEYS["billing"],
            "signing_secret": fx.STRIPE_SECRET,
            # Only charges are planned: the same tracking plan step as the Tracking API.
            "tracking_plan": str(plan),
            "unplanned_events": "block",
        },
        "crm": {
            "type": "webhook",
            "write_key": KEYS["crm"],
            "mapper": "segment",
            "signature_header": "X-Crm-Signature",
            "signature_secret": CRM_SECRET,
        },
        "open": {
            "type": "webhook",
            "write_key": KEYS["open"],
            "mapper": "eventd_plugins.webhook_source.mappers:segment",
        },
    }


def make_config(tmp_path: Path, sources: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "storage": {"path": str(tmp_path / "e.db"), "synchronous": "normal"},
            "admin": {"token": TOKEN},
            "sources": sources_table(tmp_path) if sources is None else sources,
        },
        str(tmp_path / "eventd.toml"),
    )


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[Client]]
) -> Client:
    return await aiohttp_client(create_app(make_config(tmp_path), {}))


def stored(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """messageId -> stored body; fails if a messageId is stored twice."""
    conn = sqlite3.connect(tmp_path / "e.db")
    try:
        rows = [
            (m, json.loads(b))
            for m, b in conn.execute("SELECT message_id, body FROM events ORDER BY seq")
        ]
    finally:
        conn.close()
    ids = [m for m, _ in rows]
    assert len(ids) == len(set(ids)), ids
    return dict(rows)


async def hook(
    client: Client, key: str, raw: bytes, headers: dict[str, str]
) -> tuple[int, Any, Any]:
    resp = await client.post(f"/v1/webhooks/{key}", data=raw, headers=headers)
    return resp.status, await resp.json(content_type=None), resp.headers


async def notifications(client: Client) -> dict[tuple[str, str], float]:
    """(source, outcome) -> count, from eventd_webhook_notifications_total."""
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = await resp.text()
    return {
        (s.labels["source"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "eventd_webhook_notifications"
        for s in family.samples
        if s.name.endswith("_total")
    }


async def rejected(client: Client) -> dict[str, float]:
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(await resp.text())
        if family.name == "eventd_rejected_events"
        for s in family.samples
        if s.name.endswith("_total")
    }


# -- Intercom -------------------------------------------------------------------------

# What every conversation event of fx.conversation() says.
CONVERSATION = {
    "conversation_id": "147",
    "state": "open",
    "channel": "customer_initiated",
    "source_type": "conversation",
}


async def test_intercom_conversation_started_is_the_contacts_track(
    client: Client, tmp_path: Path
) -> None:
    raw = fx.body(
        fx.notification(
            "conversation.user.created",
            fx.conversation("6571f1c2a9e5", "u-70"),
            "notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3",
        )
    )
    status, answer, _ = await hook(client, KEYS["intercom"], raw, fx.intercom_signature(raw))
    assert (status, answer) == (200, {"success": True, "events": 1})
    got = stored(tmp_path)
    assert list(got) == ["notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3"]
    event = got["notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3"]
    assert {k: event[k] for k in ("type", "event", "userId", "properties", "timestamp")} == {
        "type": "track",
        "event": "Conversation Started",
        "userId": "u-70",
        "properties": CONVERSATION,
        "timestamp": "2025-11-29T07:06:40.000Z",
    }
    # The peer is Intercom's server, not the person: no context.ip.
    assert "anonymousId" not in event and "ip" not in event.get("context", {})
    assert await notifications(client) == {("intercom", "stored"): 1}


@pytest.mark.parametrize(
    ("topic", "item", "expected"),
    [
        (
            "conversation.user.replied",
            fx.conversation(
                "6571f1c2a9e5",
                "u-70",
                [fx.part("9001", "comment", {"type": "user", "id": "6571f1c2a9e5"})],
            ),
            {
                "type": "track",
                "event": "Conversation User Replied",
                "userId": "u-70",
                "properties": {
                    **CONVERSATION,
                    "part_id": "9001",
                },
            },
        ),
        (
            "conversation.admin.replied",
            fx.conversation("6571f1c2a9e5", "u-70", [fx.part("9002", "comment", fx.ADMIN)]),
            {
                "type": "track",
                "event": "Conversation Admin Replied",
                "userId": "u-70",
                "properties": {
                    **CONVERSATION,
                    "part_id": "9002",
                    "admin_id": "814860",
                },
            },
        ),
        (
            "conversation.admin.closed",
            fx.conversation(
                "6571f1c2a9e5", None, [fx.part("9003", "close", fx.ADMIN)], state="closed"
            ),
            {
                "type": "track",
                "event": "Conversation Closed",
                # no external_id: the contact's Intercom id, as anonymousId
                "anonymousId": "6571f1c2a9e5",
                "properties": {
                    **CONVERSATION,
                    "state": "closed",
                    "admin_id": "814860",
                },
            },
        ),
        (
            "conversation.rating.added",
            fx.conversation(
                "6571f1c2a9e5",
                "u-70",
                state="closed",
                rating={"rating": 5, "remark": "quick", "created_at": fx.NOW},
            ),
            {
                "type": "track",
                "event": "Conversation Rated",
                "userId": "u-70",
                "properties": {
                    **CONVERSATION,
                    "state": "closed",
                    "rating": 5,
                    "remark": "quick",
                },
            },
        ),
        (
            "contact.user.created",
            fx.contact("6571f1c2a9e5", "u-70"),
            {
                "type": "identify",
                "userId": "u-70",
                "traits": {
                    "email": "person@example.com",
                    "name": "Pat Example",
                    "phone": "+15555550100",
                    "createdAt": "2025-11-29T06:06:40.000Z",
                    "intercom_id": "6571f1c2a9e5",
                    "intercom_role": "user",
                },
            },
        ),
        (
            "contact.lead.created",
            fx.contact("6571f1c2aaaa", None, role="lead"),
            {
                "type": "identify",
                "anonymousId": "6571f1c2aaaa",
                "traits": {
                    "email": "person@example.com",
                    "name": "Pat Example",
                    "phone": "+15555550100",
                    "createdAt": "2025-11-29T06:06:40.000Z",
                    "intercom_id": "6571f1c2aaaa",
                    "intercom_role": "lead",
                },
            },
        ),
        (
            "user.tag.created",  # API 1.x: a UserTag item, the user's own id is user_id
            fx.legacy_user_tag("u-71", "5310d8e7598c9a0b24000002", "VIP"),
            {
                "type": "track",
                "event": "Contact Tagged",
                "userId": "u-71",
                "properties": {"tag_id": "2781", "tag_name": "VIP"},
            },
        ),
    ],
)
async def test_intercom_topics_map_to_their_calls(
    client: Client, tmp_path: Path, topic: str, item: dict[str, Any], expected: dict[str, Any]
) -> None:
    notif_id = f"notif_{topic.replace('.', '-')}"
    raw = fx.body(fx.notification(topic, item, notif_id))
    status, answer, _ = await hook(client, KEYS["intercom"], raw, fx.intercom_signature(raw))
    assert (status, answer) == (200, {"success": True, "events": 1})
    event = stored(tmp_path)[notif_id]
    assert {k: event[k] for k in expected} == expected
    assert not {"userId", "anonymousId"} - set(expected) & set(event)


async def test_intercom_bad_signature_is_401_counted_and_stores_nothing(
    client: Client, tmp_path: Path
) -> None:
    raw = fx.body(
        fx.notification("conversation.user.created", fx.conversation("c1", "u-1"), "notif_forged")
    )
    cases = [
        fx.intercom_signature(raw, secret="not-the-client-secret"),
        fx.intercom_signature(raw + b" "),  # signed over other bytes
        {"Content-Type": "application/json"},  # unsigned
        {"X-Hub-Signature": "sha1=not-hex"},
    ]
    for headers in cases:
        status, answer, _ = await hook(client, KEYS["intercom"], raw, headers)
        assert status == 401
        assert answer["code"] == "invalid_signature"
        assert "sources.intercom" in answer["message"]
    assert stored(tmp_path) == {}
    assert await notifications(client) == {("intercom", "invalid_signature"): len(cases)}
    assert (await rejected(client))["invalid_signature"] == len(cases)


async def test_a_replayed_notification_is_stored_once(client: Client, tmp_path: Path) -> None:
    """Intercom retries with the same notification id (delivery_attempts + 1); Stripe
    with the same event id and a fresh signature."""
    item = fx.conversation("c2", "u-2")
    for attempt in (1, 2, 3):
        raw = fx.body(fx.notification("conversation.user.created", item, "notif_retry", attempt))
        status, answer, _ = await hook(client, KEYS["intercom"], raw, fx.intercom_signature(raw))
        assert (status, answer) == (200, {"success": True, "events": 1})
    raw = fx.body(
        fx.stripe_event("evt_retry", "charge.succeeded", fx.stripe_charge("ch_1", "cus_1", 500))
    )
    for _ in range(2):
        status, _, _ = await hook(client, KEYS["billing"], raw, fx.stripe_signature(raw))
        assert status == 200
    assert set(stored(tmp_path)) == {"notif_retry", "evt_retry"}


async def test_unknown_topic_is_200_ignored_and_counted(client: Client, tmp_path: Path) -> None:
    for topic, notif_id in (("ping", "notif_ping"), ("conversation.admin.noted", "notif_note")):
        raw = fx.body(fx.notification(topic, fx.conversation("c3", "u-3"), notif_id))
        status, answer, _ = await hook(client, KEYS["intercom"], raw, fx.intercom_signature(raw))
        assert (status, answer) == (200, {"success": True, "events": 0})
    raw = fx.body(fx.stripe_event("evt_unmapped", "payout.paid", {"id": "po_1"}))
    status, answer, _ = await hook(client, KEYS["billing"], raw, fx.stripe_signature(raw))
    assert (status, answer) == (200, {"success": True, "events": 0})
    assert stored(tmp_path) == {}
    assert await notifications(client) == {("intercom", "ignored"): 2, ("billing", "ignored"): 1}


# -- Stripe ---------------------------------------------------------------------------


async def test_stripe_events_map_to_identify_and_ecommerce_tracks(
    client: Client, tmp_path: Path
) -> None:
    sub = fx.stripe_subscription("sub_1", "cus_9", "active", "u-9")
    events = [
        fx.stripe_event("evt_c1", "customer.created", fx.stripe_customer("cus_9", "u-9")),
        fx.stripe_event("evt_c2", "customer.updated", fx.stripe_customer("cus_8", None)),
        fx.stripe_event("evt_ch", "charge.succeeded", fx.stripe_charge("ch_9", "cus_9", 1999)),
        fx.stripe_event(
            "evt_jpy",
            "charge.succeeded",
            fx.stripe_charge("ch_8", None, 5000, "jpy", metadata={"user_id": "u-8"}),
        ),
        fx.stripe_event(
            "evt_ref",
            "charge.refunded",
            fx.stripe_charge("ch_9", "cus_9", 1999, amount_refunded=1500),
            previous={"amount_refunded": 500, "refunded": False},
        ),
        fx.stripe_event("evt_inv", "invoice.paid", fx.stripe_invoice("in_1", "cus_9", 3600)),
        fx.stripe_event("evt_s1", "customer.subscription.created", sub),
        fx.stripe_event(
            "evt_s2", "customer.subscription.updated", sub, previous={"status": "trialing"}
        ),
        fx.stripe_event("evt_s3", "customer.subscription.deleted", {**sub, "status": "canceled"}),
        fx.stripe_event("evt_guest", "charge.succeeded", fx.stripe_charge("ch_7", None, 100)),
    ]
    for event in events:
        raw = fx.body(event)
        status, answer, _ = await hook(client, KEYS["billing"], raw, fx.stripe_signature(raw))
        assert status == 200, answer
    got = stored(tmp_path)
    seen = {
        m: {k: v for k, v in e.items() if k in ("type", "event", "userId", "anonymousId")}
        | {"data": e.get("traits", e.get("properties"))}
        for m, e in got.items()
    }
    assert seen == {
        "evt_c1": {
            "type": "identify",
            "userId": "u-9",
            "data": {
                "email": "person@example.com",
                "name": "Pat Example",
                "createdAt": "2025-11-29T07:04:40.000Z",
                "stripe_customer_id": "cus_9",
            },
        },
        "evt_c2": {
            "type": "identify",
            "userId": "cus_8",
            "data": {
                "email": "person@example.com",
                "name": "Pat Example",
                "createdAt": "2025-11-29T07:04:40.000Z",
                "stripe_customer_id": "cus_8",
            },
        },
        "evt_ch": {
            "type": "track",
            "event": "Charge Succeeded",
            "userId": "cus_9",
            "data": {
                "order_id": "pi_3MmlLrLkdIwHu7ix0snN0B15",
                "charge_id": "ch_9",
                "revenue": 19.99,
                "currency": "USD",
                "payment_method": "card",
                "customer_id": "cus_9",
            },
        },
        "evt_jpy": {
            "type": "track",
            "event": "Charge Succeeded",
            "userId": "u-8",
            "data": {
                "order_id": "pi_3MmlLrLkdIwHu7ix0snN0B15",
                "charge_id": "ch_8",
                "revenue": 5000.0,  # yen have no minor unit
                "currency": "JPY",
                "payment_method": "card",
            },
        },
        "evt_ref": {
            "type": "track",
            "event": "Order Refunded",
            "userId": "cus_9",
            "data": {  # this refund: 15.00 - 5.00 already refunded
                "order_id": "pi_3MmlLrLkdIwHu7ix0snN0B15",
                "charge_id": "ch_9",
                "total": 10.0,
                "revenue": -10.0,
                "currency": "USD",
                "customer_id": "cus_9",
            },
        },
        "evt_guest": {
            "type": "track",
            "event": "Charge Succeeded",
            "anonymousId": "ch_7",
            "data": {
                "order_id": "pi_3MmlLrLkdIwHu7ix0snN0B15",
                "charge_id": "ch_7",
                "revenue": 1.0,
                "currency": "USD",
                "payment_method": "card",
            },
        },
    }
    # Invoice Paid and the subscription events are off the source's tracking plan
    # (unplanned_events = "block"): refused by the pipeline, counted, still a 200.
    assert await notifications(client) == {("billing", "stored"): 6, ("billing", "rejected"): 4}
    assert (await rejected(client))["unplanned_event"] == 4


async def test_stripe_subscription_and_invoice_properties(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    sources = sources_table(tmp_path)
    for key in ("tracking_plan", "unplanned_events"):
        del sources["billing"][key]
    client = await aiohttp_client(create_app(make_config(tmp_path, sources), {}))
    sub = fx.stripe_subscription("sub_1", "cus_9", "active", "u-9")
    for event in (
        fx.stripe_event("evt_inv", "invoice.paid", fx.stripe_invoice("in_1", "cus_9", 3600)),
        fx.stripe_event(
            "evt_s2", "customer.subscription.updated", sub, previous={"status": "trialing"}
        ),
        fx.stripe_event("evt_s3", "customer.subscription.deleted", {**sub, "status": "canceled"}),
    ):
        raw = fx.body(event)
        assert (await hook(client, KEYS["billing"], raw, fx.stripe_signature(raw)))[0] == 200
    got = {m: (e["event"], e["userId"], e["properties"]) for m, e in stored(tmp_path).items()}
    plan = {
        "plan_id": "price_1MowQULkdIwHu7ixraBm864M",
        "product_id": "prod_NjpI7DbZx6AlWQ",
        "interval": "month",
        "quantity": 3,
        "amount": 36.0,
        "currency": "USD",
        "cancel_at_period_end": False,
        "customer_id": "cus_9",
        "subscription_id": "sub_1",
    }
    assert got == {
        "evt_inv": (
            "Invoice Paid",
            "cus_9",
            {
                "invoice_id": "in_1",
                "subscription_id": "sub_1MowQVLkdIwHu7ixeRlqHVzs",
                "total": 36.0,
                "currency": "EUR",
                "billing_reason": "subscription_cycle",
                "customer_id": "cus_9",
            },
        ),
        "evt_s2": (
            "Subscription Updated",
            "u-9",
            {**plan, "status": "active", "changed": ["status"]},
        ),
        "evt_s3": ("Subscription Cancelled", "u-9", {**plan, "status": "canceled"}),
    }


async def test_stripe_signature_checks(client: Client, tmp_path: Path) -> None:
    raw = fx.body(
        fx.stripe_event("evt_sig", "charge.succeeded", fx.stripe_charge("ch_1", "cus_1", 700))
    )
    now = int(time.time())
    refused = {
        "stale timestamp": fx.stripe_signature(raw, at=now - 301),
        "wrong secret": fx.stripe_signature(raw, secret="whsec_someone_else"),
        "other body": fx.stripe_signature(raw.replace(b"700", b"701")),
        "no header": {"Content-Type": "application/json"},
        "garbage header": {"Stripe-Signature": "t=abc,v1=00"},
    }
    for case, headers in refused.items():
        status, answer, _ = await hook(client, KEYS["billing"], raw, headers)
        assert (status, answer["code"]) == (401, "invalid_signature"), case
    assert stored(tmp_path) == {}
    # Within the tolerance, and while a secret is rolled (two v1, one of them valid).
    status, _, _ = await hook(client, KEYS["billing"], raw, fx.stripe_signature(raw, at=now - 250))
    assert status == 200
    rolled = fx.stripe_signature(raw, secret="whsec_old", extra_secrets=(fx.STRIPE_SECRET,))
    status, _, _ = await hook(client, KEYS["billing"], raw, rolled)
    assert status == 200
    assert set(stored(tmp_path)) == {"evt_sig"}
    counts = await notifications(client)
    assert counts == {("billing", "invalid_signature"): len(refused), ("billing", "stored"): 2}


# -- any webhook ----------------------------------------------------------------------


def crm_signature(raw: bytes, form: str) -> dict[str, str]:
    digest = hmac.new(CRM_SECRET.encode(), raw, hashlib.sha256).digest()
    value = {
        "hex": digest.hex(),
        "prefixed": "sha256=" + digest.hex(),
        "base64": base64.b64encode(digest).decode(),
    }[form]
    return {"X-Crm-Signature": value}


async def test_webhook_source_signed_by_header_and_mapped_by_entry_point(
    client: Client, tmp_path: Path
) -> None:
    for n, form in enumerate(("hex", "prefixed", "base64")):
        raw = fx.body(
            {"type": "track", "event": "Deal Won", "userId": "u-5", "messageId": f"crm-{n}"}
        )
        status, answer, _ = await hook(client, KEYS["crm"], raw, crm_signature(raw, form))
        assert (status, answer) == (200, {"success": True, "events": 1}), form
    raw = fx.body({"type": "track", "event": "Deal Won", "userId": "u-5", "messageId": "crm-x"})
    bad = crm_signature(raw + b"\n", "hex")
    assert (await hook(client, KEYS["crm"], raw, bad))[0] == 401
    assert (await hook(client, KEYS["crm"], raw, {}))[0] == 401
    # An unsigned sender: the key in the URL is its only secret. A batch, one invalid.
    raw = fx.body(
        {
            "batch": [
                {"type": "identify", "userId": "u-6", "messageId": "open-1"},
                {"type": "track", "userId": "u-6", "messageId": "open-2"},  # no event name
            ]
        }
    )
    status, answer, headers = await hook(client, KEYS["open"], raw, {})
    assert (status, answer, headers["X-Eventd-Rejected"]) == (
        200,
        {"success": True, "events": 1},
        "1",
    )
    assert set(stored(tmp_path)) == {"crm-0", "crm-1", "crm-2", "open-1"}


async def test_request_errors(client: Client, tmp_path: Path) -> None:
    raw = fx.body(fx.notification("conversation.user.created", fx.conversation("c", "u"), "n1"))
    # A webhook key is not a Tracking API key, and a Tracking API key is no webhook's.
    resp = await client.post(
        "/v1/track",
        data=json.dumps({"userId": "u", "event": "E"}),
        headers={"Authorization": basic(KEYS["intercom"])},
    )
    assert (resp.status, (await resp.json())["code"]) == (401, "invalid_write_key")
    for key in (KEYS["web"], "wk_nobody"):
        status, answer, _ = await hook(client, key, raw, fx.intercom_signature(raw))
        assert (status, answer["code"]) == (404, "unknown_write_key")
    not_json = b"{not json"
    status, answer, _ = await hook(
        client, KEYS["intercom"], not_json, fx.intercom_signature(not_json)
    )
    assert (status, answer["code"]) == (400, "invalid_json")
    assert stored(tmp_path) == {}
    assert await notifications(client) == {("intercom", "invalid_json"): 1}


# -- a third-party source type ----------------------------------------------------------


class Tally(Source):
    """A test source type: the body names who did what; ``X-Tally-Token`` must match."""

    type_name = "tally"
    settings_schema = {
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string"}},
        "additionalProperties": False,
    }

    def verify(self, headers: Any, body: bytes) -> bool:
        return hmac.compare_digest(headers.get("X-Tally", ""), self.settings["token"])

    def map(self, payload: Any) -> list[Message]:
        if payload.get("what") == "explode":
            raise KeyError("what")
        return [
            {
                "type": "track",
                "event": "Tally " + payload["what"],
                "userId": payload["who"],
                "messageId": payload["id"],
            }
        ]


@pytest.fixture
def tally_plugin() -> Iterator[ModuleType]:
    """Registered with the plugin manager in process, the way an entry point would."""
    module = ModuleType("eventd_tally")

    @hookimpl
    def eventd_source_types() -> list[type[Source]]:
        return [Tally]

    module.eventd_source_types = eventd_source_types  # type: ignore[attr-defined]
    pm = plugin_manager()
    pm.register(module, name="eventd-tally")
    try:
        yield module
    finally:
        pm.unregister(module)


async def test_third_party_source_type(
    tally_plugin: ModuleType, tmp_path: Path, aiohttp_client: Any
) -> None:
    assert source_types()["tally"] is Tally
    sources = {"t": {"type": "tally", "write_key": "wk_tally", "token": "tk-123456"}}
    client = await aiohttp_client(create_app(make_config(tmp_path, sources), {}))
    good = {"X-Tally": "tk-123456"}
    raw = fx.body({"id": "t-1", "who": "u-1", "what": "Counted"})
    assert (await hook(client, "wk_tally", raw, good))[:2] == (200, {"success": True, "events": 1})
    assert (await hook(client, "wk_tally", raw, {"X-Tally": "tk-654321"}))[0] == 401
    # A mapper that raises: not acknowledged (the sender retries), counted.
    raw = fx.body({"id": "t-2", "who": "u-1", "what": "explode"})
    status, answer, _ = await hook(client, "wk_tally", raw, good)
    assert (status, answer["code"]) == (500, "mapping_failed")
    assert {m: e["event"] for m, e in stored(tmp_path).items()} == {"t-1": "Tally Counted"}
    assert await notifications(client) == {
        ("t", "stored"): 1,
        ("t", "invalid_signature"): 1,
        ("t", "mapping_failed"): 1,
    }
    # Its settings are validated like a first-party type's.
    with pytest.raises(ConfigError, match=r"sources\.t: 'token' is a required property"):
        check_sources(
            make_config(tmp_path, {"t": {"type": "tally", "write_key": "k"}}), source_types()
        )


def test_a_source_type_named_like_another_is_refused(tally_plugin: ModuleType) -> None:
    class Again(Tally):
        type_name = "intercom"

    module = ModuleType("eventd_again")
    module.eventd_source_types = hookimpl(lambda: [Again])  # type: ignore[attr-defined]
    pm = plugin_manager()
    pm.register(module, name="eventd-again")
    try:
        with pytest.raises(ConfigError, match="source type 'intercom' is provided twice"):
            source_types()
    finally:
        pm.unregister(module)


# -- settings errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"type": "zendesk"},
            r"sources\.s\.type = 'zendesk': expected an installed source type "
            r"\(intercom, segment, stripe, webhook",
        ),
        ({"type": "intercom"}, r"sources\.s: 'client_secret' is a required property"),
        (
            {"type": "intercom", "client_secret": "x", "clientsecret": "y"},
            r"sources\.s: Additional properties are not allowed \('clientsecret' was unexpected\)",
        ),
        ({"type": "stripe", "signing_secret": 12345678}, r"sources\.s\.signing_secret = \*\*\*: "),
        (
            {"type": "webhook", "mapper": "acme_mappers:crm"},
            r"sources\.s\.mapper = 'acme_mappers:crm': expected an installed mapper, an entry "
            r"point of the 'eventd.source_mappers' group .*segment "
            r"\(eventd_plugins.webhook_source.mappers:segment\)",
        ),
        (
            {"type": "webhook", "mapper": "segment", "signature_header": "X-Sig"},
            r"sources\.s: 'signature_secret' is a dependency of 'signature_header'",
        ),
        (
            {"type": "webhook", "mapper": "segment", "signature_algorithm": "md5"},
            r"sources\.s\.signature_algorithm = 'md5': value is not one of",
        ),
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, source: dict[str, Any], message: str) -> None:
    config = make_config(tmp_path, {"s": {"write_key": "wk_s", **source}})
    with pytest.raises(ConfigError, match=message) as caught:
        check_sources(config, source_types())
    assert str(caught.value).startswith(f"{tmp_path / 'eventd.toml'}: sources.s")
    assert "12345678" not in str(caught.value)


def test_tracking_api_sources_keep_refusing_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.web\.client_secret = 'x': expected one of"):
        make_config(tmp_path, {"web": {"write_key": "wk", "client_secret": "x"}})


def test_eventd_check_validates_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "eventd.toml"
    path.write_text(tomli_w.dumps({"sources": sources_table(tmp_path)}))
    assert main(["check", "--config", str(path)]) == 0
    assert "ok (5 sources, 0 destinations)" in capsys.readouterr().out
    path.write_text(
        tomli_w.dumps({"sources": {"billing": {"type": "stripe", "write_key": "wk_b"}}})
    )
    assert main(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"eventd: {path}: sources.billing: 'signing_secret' is a required property\n"
    )


def test_eventd_plugins_lists_source_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    listed = out[out.index("source types") :]
    for line in (
        "segment  (eventd)",
        "intercom  (eventd_plugins.intercom_source)",
        "stripe  (eventd_plugins.stripe_source)",
        "webhook  (eventd_plugins.webhook_source)",
        "    client_secret ",
        "    signing_secret ",
        "    mapper ",
    ):
        assert line in listed, line


# -- end to end: Intercom -> eventd (a subprocess) -> Mixpanel's contract server ---------


def test_intercom_conversation_reaches_mixpanel_as_the_known_users_event(
    eventd: Callable[..., EventdProcess], mixpanel: MixpanelServer
) -> None:
    """The story: a user of the app starts a chat in Intercom, and the chat shows in
    Mixpanel as that user's "Conversation Started", next to their product events."""
    ev = eventd(
        {
            "sources": {
                "intercom": {
                    "type": "intercom",
                    "write_key": KEYS["intercom"],
                    "client_secret": fx.INTERCOM_SECRET,
                }
            },
            "destinations": {
                "mp": destination(
                    "mixpanel", {"project_token": mixpanel.project_token, "endpoint": mixpanel.url}
                )
            },
        }
    )
    # The app knows the user: their own events come through the Tracking API.
    post(ev, [{"type": "track", "event": "Signed Up", "userId": "u-70", "messageId": "app-1"}])
    notif_id = "notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3"
    for attempt in (1, 2):  # Intercom's retry of the same notification
        raw = fx.body(
            fx.notification(
                "conversation.user.created",
                fx.conversation("6571f1c2a9e5", "u-70"),
                notif_id,
                attempt,
            )
        )
        status, answer = ev.post(
            f"/v1/webhooks/{KEYS['intercom']}", raw, headers=fx.intercom_signature(raw)
        )
        assert (status, answer) == (200, {"success": True, "events": 1})
    forged = fx.body(
        fx.notification("conversation.user.created", fx.conversation("x", "u-70"), "n2")
    )
    assert (
        ev.post(f"/v1/webhooks/{KEYS['intercom']}", forged, headers=fx.intercom_signature(b"x"))[0]
        == 401
    )
    ev.drain()

    by_insert_id = {e["properties"]["$insert_id"]: e for e in mixpanel.imported}
    assert mixpanel.insert_ids() == {"app-1": 1, insert_id(notif_id): 1}
    started = by_insert_id[insert_id(notif_id)]
    assert started["event"] == "Conversation Started"
    props = started["properties"]
    assert (props["distinct_id"], props["$user_id"], props["time"]) == (
        by_insert_id["app-1"]["properties"]["distinct_id"],
        "u-70",
        fx.NOW * 1000,
    )
    assert {k: props[k] for k in CONVERSATION} == CONVERSATION
    assert dead_letters(ev, "mp") == {} and skipped(ev, "mp") == {}


def test_serve_refuses_to_start_naming_the_bad_source_key(tmp_path: Path) -> None:
    path = tmp_path / "eventd.toml"
    sources = sources_table(tmp_path)
    sources["crm"]["signature_algorithm"] = "md5"
    path.write_text(
        tomli_w.dumps({"storage": {"path": str(tmp_path / "e.db")}, "sources": sources})
    )
    done = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(
        f"eventd: {path}: sources.crm.signature_algorithm = 'md5': value is not one of"
    )


async def test_a_cloud_app_source_opens_no_browser_origin(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    sources = {
        "shop": {"write_key": "wk_shop", "allowed_origins": ["https://shop.example"]},
        "intercom": sources_table(tmp_path)["intercom"],
    }
    client = await aiohttp_client(create_app(make_config(tmp_path, sources), {}))
    for origin, status in (("https://shop.example", 204), ("https://evil.example", 403)):
        resp = await client.options(
            "/v1/track",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert resp.status == status, origin
