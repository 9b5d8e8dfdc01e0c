"""A GA4 Measurement Protocol server that keeps Google's rules, for end-to-end tests.

Like the real one, ``POST /mp/collect`` answers 204 to anything it can read,
valid or not, known credentials or not: GA4 drops bad data silently. So this
server *records* what it accepted (``collected``) and writes down everything
the real one would have dropped (``problems``): tests assert that eventd sent
nothing GA4 would lose. ``POST /debug/mp/collect`` answers
``{"validationMessages": [...]}`` for the same rules, and (like Google's) does
not check credentials. A body of ``max_body`` bytes or more is refused with 413.

The rules are written from Google's documentation, independently of the
plugin, so a passing test means two readings of the docs agree:
- body: ``client_id`` required; ``user_id`` a string of at most 256 characters;
  ``events`` 1..25;
- event names and param names: at most 40 characters, ``[A-Za-z][A-Za-z0-9_]*``,
  not reserved (names, and the prefixes ``_ firebase_ ga_ google_ gtag.``);
- at most 25 params an event; values strings (at most 100 characters;
  page_location 1000, page_referrer 420, page_title 300) or numbers;
- ``items``: a list of at most 200 objects, each with ``item_id`` or
  ``item_name``, at most 10 custom item params, values at most 100 characters;
- ``currency`` a 3-letter code; ``value`` a number, with a currency on
  ecommerce events; ``transaction_id`` on purchase and refund;
- ``timestamp_micros`` at most 72 hours in the past.

``script`` injects answers before any rule, one per request: ``(status,
headers, body)``, e.g. a 429 with Retry-After, a 5xx, or a proxy's 403.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness import free_port

MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_NAME = 40
MAX_VALUE = 100
LONG_VALUES = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
MAX_ITEMS = 200
MAX_CUSTOM_ITEM_PARAMS = 10
BACKDATE_MICROS = 72 * 3600 * 1_000_000
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag.")
RESERVED_EVENTS = frozenset(
    [
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
    ]
)
RESERVED_PARAMS = frozenset({"firebase_conversion"})
STANDARD_ITEM_PARAMS = frozenset(
    [
        "item_id",
        "item_name",
        "affiliation",
        "coupon",
        "discount",
        "index",
        "item_brand",
        "item_category",
        "item_category2",
        "item_category3",
        "item_category4",
        "item_category5",
        "item_list_id",
        "item_list_name",
        "item_variant",
        "location_id",
        "price",
        "quantity",
        "promotion_id",
        "promotion_name",
        "creative_name",
        "creative_slot",
    ]
)
ECOMMERCE = frozenset(
    [
        "add_payment_info",
        "add_shipping_info",
        "add_to_cart",
        "add_to_wishlist",
        "begin_checkout",
        "purchase",
        "refund",
        "remove_from_cart",
        "view_cart",
        "view_item",
        "view_item_list",
        "select_item",
    ]
)
ORDERS = frozenset({"purchase", "refund"})


def _message(path: str, description: str, code: str) -> dict[str, str]:
    return {"fieldPath": path, "description": description, "validationCode": code}


def validate(
    body: Any, now_micros: int | None = None, reserved_events: frozenset[str] = RESERVED_EVENTS
) -> list[dict[str, str]]:
    """The validationMessages GA4 would give for this request body."""
    now_micros = now_micros if now_micros is not None else int(time.time() * 1_000_000)
    if not isinstance(body, dict):
        return [_message("", "Unable to parse the request body as a JSON object.", "VALUE_INVALID")]
    out: list[dict[str, str]] = []
    client_id = body.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        out.append(_message("client_id", "client_id is required.", "VALUE_REQUIRED"))
    user_id = body.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
        out.append(
            _message(
                "user_id", "user_id must be a string of at most 256 characters.", "VALUE_INVALID"
            )
        )
    events = body.get("events")
    if not isinstance(events, list) or not events:
        out.append(_message("events", "events is required.", "VALUE_REQUIRED"))
        return out
    if len(events) > MAX_EVENTS:
        out.append(
            _message(
                "events",
                f"A request can have at most {MAX_EVENTS} events.",
                "EXCEEDED_MAX_ENTITIES",
            )
        )
    for i, event in enumerate(events):
        out += _event(i, event, now_micros, reserved_events)
    return out


def _name_problem(name: Any, reserved: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(name, str) or not name:
        return "VALUE_REQUIRED", "a name is required"
    if len(name) > MAX_NAME:
        return "NAME_INVALID", f"[{name}] is longer than {MAX_NAME} characters"
    if name.startswith(RESERVED_PREFIXES) or name in reserved:
        return "NAME_RESERVED", f"[{name}] is reserved"
    if not NAME.match(name):
        return "NAME_INVALID", (
            f"[{name}] is invalid. Names must start with an alphabetic character and contain"
            " only alphanumeric characters and underscores"
        )
    return None


def _event(
    i: int, event: Any, now_micros: int, reserved_events: frozenset[str]
) -> list[dict[str, str]]:
    at = f"Event at index: [{i}]"
    if not isinstance(event, dict):
        return [_message("events", f"{at} is not an object.", "VALUE_INVALID")]
    out: list[dict[str, str]] = []
    name = event.get("name")
    problem = _name_problem(name, reserved_events)
    if problem:
        out.append(_message("events", f"{at} has invalid name: {problem[1]}.", problem[0]))
    stamp = event.get("timestamp_micros")
    if stamp is not None and (not isinstance(stamp, int) or now_micros - stamp > BACKDATE_MICROS):
        out.append(
            _message(
                "events", f"{at} has a timestamp_micros more than 72 hours old.", "VALUE_INVALID"
            )
        )
    params = event.get("params", {})
    if not isinstance(params, dict):
        return [
            *out,
            _message("events", f"{at} has params that are not an object.", "VALUE_INVALID"),
        ]
    if len(params) > MAX_PARAMS:
        out.append(
            _message("events", f"{at} has more than {MAX_PARAMS} params.", "EXCEEDED_MAX_ENTITIES")
        )
    for key, value in params.items():
        problem = _name_problem(key, RESERVED_PARAMS)
        if problem:
            out.append(
                _message("events", f"{at} has invalid param name: {problem[1]}.", problem[0])
            )
        if key == "items":
            out += _items(at, value)
        elif not _scalar_ok(value, LONG_VALUES.get(key, MAX_VALUE)):
            out.append(
                _message(
                    "events",
                    f"{at} has an invalid value for param [{key}].",
                    "VALUE_OUT_OF_BOUNDS" if isinstance(value, str) else "VALUE_INVALID",
                )
            )
    currency = params.get("currency")
    if currency is not None and not (
        isinstance(currency, str) and re.fullmatch(r"[A-Z]{3}", currency)
    ):
        out.append(_message("events", f"{at} has an invalid currency code.", "VALUE_INVALID"))
    value = params.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        out.append(_message("events", f"{at} has a value that is not a number.", "VALUE_INVALID"))
    if name in ECOMMERCE and value is not None and currency is None:
        out.append(_message("events", f"{at} sets value without currency.", "VALUE_REQUIRED"))
    if name in ORDERS and not params.get("transaction_id"):
        out.append(_message("events", f"{at} ({name}) needs transaction_id.", "VALUE_REQUIRED"))
    return out


def _scalar_ok(value: Any, limit: int) -> bool:
    if isinstance(value, str):
        return len(value) <= limit
    return isinstance(value, int | float) and not isinstance(value, bool)


def _items(at: str, items: Any) -> list[dict[str, str]]:
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        return [
            _message("events", f"{at} has items that are not a list of objects.", "VALUE_INVALID")
        ]
    out: list[dict[str, str]] = []
    if len(items) > MAX_ITEMS:
        out.append(
            _message("events", f"{at} has more than {MAX_ITEMS} items.", "EXCEEDED_MAX_ENTITIES")
        )
    for j, item in enumerate(items):
        if not item.get("item_id") and not item.get("item_name"):
            out.append(
                _message("events", f"{at} item [{j}] needs item_id or item_name.", "VALUE_REQUIRED")
            )
        custom = [k for k in item if k not in STANDARD_ITEM_PARAMS]
        if len(custom) > MAX_CUSTOM_ITEM_PARAMS:
            out.append(
                _message(
                    "events",
                    f"{at} item [{j}] has more than 10 custom params.",
                    "EXCEEDED_MAX_ENTITIES",
                )
            )
        for key, value in item.items():
            if not _scalar_ok(value, MAX_VALUE):
                out.append(
                    _message("events", f"{at} item [{j}] has an invalid [{key}].", "VALUE_INVALID")
                )
    return out


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    size: int
    status: int


@dataclass
class Ga4Server:
    measurement_id: str = "G-TEST1234"
    api_secret: str = "mp_secret_for_tests"
    max_body: int = 130_000
    # Google says its list "may be updated periodically": a test can reserve more.
    reserved_events: frozenset[str] = RESERVED_EVENTS
    port: int = field(default_factory=free_port)
    # injected answers: (status, headers, body text)
    script: collections.deque[tuple[int, dict[str, str], str]] = field(
        default_factory=collections.deque
    )
    received: list[Received] = field(default_factory=list)  # every request, both endpoints
    collected: list[dict[str, Any]] = field(default_factory=list)  # bodies /mp/collect kept
    problems: list[str] = field(default_factory=list)  # what the real GA4 would drop silently
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/mp/collect", self._collect)
        app.router.add_post("/debug/mp/collect", self._debug)
        return app

    def events(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(client_id, user_id, event) of every event collected, in arrival order."""
        with self.lock:
            return [
                (b["client_id"], b.get("user_id"), e) for b in self.collected for e in b["events"]
            ]

    def collect_requests(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == "/mp/collect"]

    async def _read(self, request: web.Request) -> tuple[Received, web.Response | None]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = Received(request.path, dict(request.query), body, len(raw), 0)
        with self.lock:
            self.received.append(rec)
            injected = self.script.popleft() if self.script else None
        if injected is not None:
            status, headers, text = injected
            rec.status = status
            return rec, web.Response(status=status, headers=headers, text=text)
        if len(raw) >= self.max_body:
            rec.status = 413
            return rec, web.Response(status=413, text="Request Entity Too Large")
        return rec, None

    async def _collect(self, request: web.Request) -> web.Response:
        rec, answer = await self._read(request)
        if answer is not None:
            return answer
        rec.status = 204
        known = (
            rec.query.get("measurement_id") == self.measurement_id
            and rec.query.get("api_secret") == self.api_secret
        )
        messages = validate(rec.body, reserved_events=self.reserved_events)
        with self.lock:
            if not known:
                self.problems.append("unknown measurement_id or api_secret: request dropped")
            elif messages:
                self.problems += [f"{m['validationCode']}: {m['description']}" for m in messages]
            else:
                self.collected.append(rec.body)
        return web.Response(status=204)

    async def _debug(self, request: web.Request) -> web.Response:
        rec, answer = await self._read(request)
        if answer is not None:
            return answer
        rec.status = 200
        messages = validate(rec.body, reserved_events=self.reserved_events)
        return web.json_response({"validationMessages": messages})
