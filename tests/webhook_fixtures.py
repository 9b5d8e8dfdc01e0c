"""Provider notifications for the cloud-app source tests, signed the way each provider does.

Payloads follow the providers' published examples (Intercom's webhook
``notification_event`` with a conversation or contact item, API 2.x, and the 1.x
shapes still sent to older apps; Stripe's Event object with ``data.object``), with
personal data replaced. Signatures are computed here from the providers'
documented recipes, not with eventd's or the provider library's code:

- Intercom: ``X-Hub-Signature: sha1=`` + hex HMAC-SHA1 of the raw body, keyed by the
  app's client secret.
- Stripe: ``Stripe-Signature: t=<unix seconds>,v1=`` + hex HMAC-SHA256 of
  ``"<t>.<raw body>"``, keyed by the endpoint's signing secret (several ``v1`` while a
  secret is rolled).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

INTERCOM_SECRET = "ic_client_secret_4c1b2a9d8e7f"
STRIPE_SECRET = "whsec_test_5e0f6a1b2c3d4e5f6a7b8c9d"
APP_ID = "a1b2c3d4"
NOW = 1_764_400_000  # 2025-11-29T07:06:40Z, the fixtures' creation time


def body(payload: dict[str, Any]) -> bytes:
    """A body as providers send it: compact JSON (the signature is over these bytes)."""
    return json.dumps(payload, separators=(",", ":")).encode()


# -- Intercom -------------------------------------------------------------------------


def intercom_signature(raw: bytes, secret: str = INTERCOM_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), raw, hashlib.sha1).hexdigest()
    return {"X-Hub-Signature": f"sha1={digest}", "Content-Type": "application/json"}


def notification(
    topic: str, item: dict[str, Any], notif_id: str, attempts: int = 1
) -> dict[str, Any]:
    return {
        "type": "notification_event",
        "app_id": APP_ID,
        "data": {"type": "notification_event_data", "item": item},
        "links": {},
        "id": notif_id,
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": attempts,
        "delivered_at": 0,
        "first_sent_at": NOW,
        "created_at": NOW,
        "self": None,
    }


def contact(contact_id: str, external_id: str | None, role: str = "user") -> dict[str, Any]:
    """A 2.x contact, as in ``contact.user.created`` (Intercom's contact model)."""
    return {
        "type": "contact",
        "id": contact_id,
        "workspace_id": APP_ID,
        "external_id": external_id,
        "role": role,
        "email": "person@example.com",
        "phone": "+15555550100",
        "name": "Pat Example",
        "avatar": None,
        "owner_id": None,
        "social_profiles": {"type": "list", "data": []},
        "has_hard_bounced": False,
        "marked_email_as_spam": False,
        "unsubscribed_from_emails": False,
        "created_at": NOW - 3600,
        "updated_at": NOW,
        "signed_up_at": NOW - 3600,
        "last_seen_at": None,
        "last_replied_at": None,
        "last_contacted_at": None,
        "browser": None,
        "os": None,
        "custom_attributes": {},
        "tags": {"type": "list", "data": [], "url": f"/contacts/{contact_id}/tags"},
        "companies": {"type": "list", "data": [], "url": f"/contacts/{contact_id}/companies"},
        "location": {"type": "location", "country": None, "region": None, "city": None},
    }


def part(part_id: str, part_type: str, author: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation_part",
        "id": part_id,
        "part_type": part_type,
        "body": "<p>(text replaced)</p>",
        "created_at": NOW,
        "updated_at": NOW,
        "notified_at": NOW,
        "assigned_to": None,
        "author": author,
        "attachments": [],
        "external_id": None,
        "redacted": False,
    }


ADMIN = {"type": "admin", "id": "814860", "name": "Support Agent", "email": "agent@example.com"}


def conversation(
    contact_id: str,
    external_id: str | None,
    parts: list[dict[str, Any]] | None = None,
    state: str = "open",
    rating: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A 2.x conversation (Intercom's conversation model), started by the contact."""
    author = {
        "type": "user",
        "id": contact_id,
        "name": "Pat Example",
        "email": "person@example.com",
    }
    return {
        "type": "conversation",
        "id": "147",
        "title": None,
        "created_at": NOW - 60,
        "updated_at": NOW,
        "waiting_since": NOW,
        "snoozed_until": None,
        "open": state == "open",
        "state": state,
        "read": False,
        "priority": "not_priority",
        "admin_assignee_id": None,
        "team_assignee_id": None,
        "tags": {"type": "tag.list", "tags": []},
        "conversation_rating": rating,
        "source": {
            "type": "conversation",
            "id": "403918330",
            "delivered_as": "customer_initiated",
            "subject": "",
            "body": "<p>(text replaced)</p>",
            "author": author,
            "attachments": [],
            "url": None,
            "redacted": False,
        },
        "contacts": {
            "type": "contact.list",
            "contacts": [{"type": "contact", "id": contact_id, "external_id": external_id}],
        },
        "teammates": {"type": "admin.list", "admins": []},
        "custom_attributes": {},
        "first_contact_reply": {"created_at": NOW - 60, "type": "conversation", "url": None},
        "sla_applied": None,
        "statistics": None,
        "conversation_parts": {
            "type": "conversation_part.list",
            "conversation_parts": parts or [],
            "total_count": len(parts or []),
        },
        "linked_objects": {"type": "list", "data": [], "total_count": 0, "has_more": False},
    }


def legacy_user_tag(user_id: str, intercom_id: str, tag_name: str) -> dict[str, Any]:
    """A 1.x ``user.tag.created`` item (the UserTag object: tag, user, created_at)."""
    return {
        "type": "user_tag",
        "created_at": NOW,
        "tag": {"type": "tag", "id": "2781", "name": tag_name},
        "user": {
            "type": "user",
            "id": intercom_id,
            "user_id": user_id,
            "email": "person@example.com",
            "name": "Pat Example",
        },
    }


# -- Stripe ---------------------------------------------------------------------------


def stripe_signature(
    raw: bytes,
    secret: str = STRIPE_SECRET,
    at: int | None = None,
    extra_secrets: tuple[str, ...] = (),
) -> dict[str, str]:
    t = int(time.time()) if at is None else at
    signed = f"{t}.".encode() + raw
    sigs = [
        hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in (secret, *extra_secrets)
    ]
    header = ",".join([f"t={t}", *(f"v1={s}" for s in sigs)])
    return {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"}


def stripe_event(
    event_id: str, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": NOW,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {
            "id": "req_9f8e7d6c5b4a",
            "idempotency_key": "5c1e0b6a-0000-4000-8000-000000000001",
        },
        "type": kind,
    }


def stripe_customer(customer_id: str, user_id: str | None) -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": NOW - 120,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": "person@example.com",
        "invoice_prefix": "7D2A1B3C",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
        "livemode": False,
        "metadata": {"user_id": user_id} if user_id else {},
        "name": "Pat Example",
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def stripe_charge(
    charge_id: str,
    customer: str | None,
    amount: int,
    currency: str = "usd",
    amount_refunded: int = 0,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "balance_transaction": "txn_3MmlLrLkdIwHu7ix0uke3Ezy",
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "captured": True,
        "created": NOW - 5,
        "currency": currency,
        "customer": customer,
        "description": None,
        "livemode": False,
        "metadata": metadata or {},
        "paid": True,
        "payment_intent": "pi_3MmlLrLkdIwHu7ix0snN0B15",
        "payment_method": "pm_1MmlLrLkdIwHu7ixIJwEWSNR",
        "payment_method_details": {"card": {"brand": "visa", "last4": "4242"}, "type": "card"},
        "receipt_url": None,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def stripe_invoice(invoice_id: str, customer: str, amount_paid: int) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "amount_due": amount_paid,
        "amount_paid": amount_paid,
        "amount_remaining": 0,
        "billing_reason": "subscription_cycle",
        "currency": "eur",
        "customer": customer,
        "customer_email": "person@example.com",
        "metadata": {},
        "paid": True,
        "status": "paid",
        "subscription": "sub_1MowQVLkdIwHu7ixeRlqHVzs",
        "total": amount_paid,
    }


def stripe_subscription(sub_id: str, customer: str, status: str, user_id: str) -> dict[str, Any]:
    price = {
        "id": "price_1MowQULkdIwHu7ixraBm864M",
        "object": "price",
        "active": True,
        "currency": "usd",
        "product": "prod_NjpI7DbZx6AlWQ",
        "recurring": {"interval": "month", "interval_count": 1},
        "type": "recurring",
        "unit_amount": 1200,
    }
    return {
        "id": sub_id,
        "object": "subscription",
        "cancel_at_period_end": False,
        "created": NOW - 10,
        "currency": "usd",
        "customer": customer,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_NcLYdDxLHxlFo7",
                    "object": "subscription_item",
                    "price": price,
                    "quantity": 3,
                }
            ],
        },
        "metadata": {"user_id": user_id},
        "status": status,
    }
