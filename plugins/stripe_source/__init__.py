"""The ``stripe`` source type: Stripe's webhook events as Segment calls.

Stripe POSTs an Event object (``{"id": "evt_...", "object": "event", "type":
"charge.succeeded", "created": UNIX_S, "data": {"object": {...},
"previous_attributes": {...}}}``) with ``Stripe-Signature: t=UNIX_S,v1=<hex
HMAC-SHA256 of "t.body">`` keyed by the endpoint's signing secret. The signature
and its age (at most 300 s, Stripe's default tolerance, against replays) are
checked by the ``stripe`` library's own verifier (``pip install 'eventd[stripe]'``).
The event id is the messageId, so Stripe's retries are stored once.

The person is the object's ``metadata.user_id`` when set (your user id, put there
when you create the customer or subscription), else the Stripe customer id as
userId; a payment with no customer has its object id as anonymousId.
Money is in the currency's major unit (Stripe's amounts are in minor units:
cents, or yen for zero-decimal currencies). The mapping is in :data:`TRACKS`,
:data:`IDENTIFY_TYPES` and this package's README; other types are ignored.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from eventd import Message, Source, compact, hookimpl, iso_time, message, optional_import

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
IDENTIFY_TYPES = frozenset({"customer.created", "customer.updated"})
# Currencies whose amounts Stripe gives in the major unit, and those with three
# decimals (Stripe's docs, "Zero-decimal currencies" and "Three-decimal currencies").
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def major(amount: object, currency: object) -> float | None:
    """A Stripe amount (minor units) in the currency's major unit: 1999 usd -> 19.99."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return None
    code = currency.lower() if isinstance(currency, str) else ""
    if code in ZERO_DECIMAL:
        return float(amount)
    return round(amount / (1000 if code in THREE_DECIMAL else 100), 3)


def _currency(obj: Mapping[str, Any]) -> str | None:
    code = obj.get("currency")
    return code.upper() if isinstance(code, str) else None


def _id(value: object) -> str | None:
    """An id field, given as the id or as an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def charge_succeeded(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """Segment's ecommerce ``revenue``: every payment is a charge, so revenue is counted
    here and not again on the invoice it paid."""
    return {
        "order_id": _id(obj.get("payment_intent")) or _id(obj.get("id")),
        "charge_id": _id(obj.get("id")),
        "revenue": major(obj.get("amount"), obj.get("currency")),
        "currency": _currency(obj),
        "payment_method": _dict(obj.get("payment_method_details")).get("type"),
    }


def charge_refunded(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """Segment's "Order Refunded": this refund's amount as ``total`` and as negative
    ``revenue`` (so revenue sums are net). ``amount_refunded`` is the charge's running
    total; a partial refund's own amount is its rise since ``previous_attributes``."""
    refunded = obj.get("amount_refunded")
    before = previous.get("amount_refunded", 0)
    amount = (
        refunded - before
        if isinstance(refunded, int) and isinstance(before, int) and not isinstance(before, bool)
        else refunded
    )
    total = major(amount, obj.get("currency"))
    return {
        "order_id": _id(obj.get("payment_intent")) or _id(obj.get("id")),
        "charge_id": _id(obj.get("id")),
        "total": total,
        "revenue": -total if total else None,
        "currency": _currency(obj),
    }


def invoice_paid(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    parent = _dict(_dict(obj.get("parent")).get("subscription_details"))
    return {
        "invoice_id": _id(obj.get("id")),
        # API versions before 2025-03 say "subscription"; later ones, parent.subscription_details
        "subscription_id": _id(obj.get("subscription")) or _id(parent.get("subscription")),
        "total": major(obj.get("amount_paid"), obj.get("currency")),
        "currency": _currency(obj),
        "billing_reason": obj.get("billing_reason"),
    }


def subscription(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    items = _dict(obj.get("items")).get("data")
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    price = _dict(first.get("price") or first.get("plan"))
    quantity = first.get("quantity")
    unit = price.get("unit_amount", price.get("amount"))
    amount = (
        unit * quantity
        if isinstance(unit, int) and isinstance(quantity, int) and not isinstance(quantity, bool)
        else unit
    )
    return {
        "subscription_id": _id(obj.get("id")),
        "status": obj.get("status"),
        "plan_id": _id(price.get("id")),
        "product_id": _id(price.get("product")),
        "interval": _dict(price.get("recurring")).get("interval") or price.get("interval"),
        "quantity": quantity,
        "amount": major(amount, price.get("currency")),
        "currency": _currency(price),
        "cancel_at_period_end": obj.get("cancel_at_period_end"),
        "changed": sorted(previous) or None,
    }


Properties = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
# event type -> (track event name, its properties from (object, previous_attributes)).
TRACKS: dict[str, tuple[str, Properties]] = {
    "charge.succeeded": ("Charge Succeeded", charge_succeeded),
    "charge.refunded": ("Order Refunded", charge_refunded),
    "invoice.paid": ("Invoice Paid", invoice_paid),
    "customer.subscription.created": ("Subscription Created", subscription),
    "customer.subscription.updated": ("Subscription Updated", subscription),
    "customer.subscription.deleted": ("Subscription Cancelled", subscription),
}


class StripeSource(Source):
    type_name = "stripe"
    description = "Stripe webhook events (customers, charges, refunds, invoices, subscriptions)"
    settings_schema = {
        "type": "object",
        "required": ["signing_secret"],
        "properties": {
            "signing_secret": {
                "type": "string",
                "minLength": 1,
                "description": "The endpoint's signing secret (whsec_...): signs Stripe-Signature",
            }
        },
        "additionalProperties": False,
    }

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        optional_import("stripe", "stripe", f"sources.{name} (type 'stripe')")

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self._stripe = importlib.import_module("stripe")  # check_settings found it

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            return False
        try:
            self._stripe.WebhookSignature.verify_header(
                body.decode("utf-8"),
                header,
                self.settings["signing_secret"],
                tolerance=TOLERANCE_SECONDS,
            )
        except (self._stripe.SignatureVerificationError, UnicodeDecodeError):
            return False
        return True

    def map(self, payload: Any) -> list[Message]:
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type")
        data = _dict(payload.get("data"))
        obj, previous = _dict(data.get("object")), _dict(data.get("previous_attributes"))
        ids = {"message_id": _id(payload.get("id")), "timestamp": payload.get("created")}
        if kind in IDENTIFY_TYPES:
            return [
                message(
                    "identify",
                    user_id=_user_id(obj) or _id(obj.get("id")),
                    traits=compact(
                        {
                            "email": obj.get("email"),
                            "name": obj.get("name"),
                            "phone": obj.get("phone"),
                            "createdAt": iso_time(obj.get("created")),
                            "stripe_customer_id": _id(obj.get("id")),
                        }
                    ),
                    **ids,
                )
            ]
        if not isinstance(kind, str) or kind not in TRACKS:
            return []
        event, properties = TRACKS[kind]
        customer = _id(obj.get("customer"))
        user_id = _user_id(obj) or customer
        return [
            message(
                "track",
                user_id=user_id,
                anonymous_id=None if user_id else _id(obj.get("id")),
                event=event,
                properties=compact({**properties(obj, previous), "customer_id": customer}),
                **ids,
            )
        ]


def _user_id(obj: Mapping[str, Any]) -> str | None:
    value = _dict(obj.get("metadata")).get("user_id")
    return value if isinstance(value, str) and value else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@hookimpl
def eventd_source_types() -> list[type[Source]]:
    return [StripeSource]
