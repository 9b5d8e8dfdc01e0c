"""The ``ga4`` destination: Google Analytics 4 through the Measurement Protocol.

Owns the requests: ``POST {endpoint}/mp/collect?measurement_id=…&api_secret=…``
with ``{client_id, user_id?, events}``. Events of one request share a client and
a user, so a batch is grouped by (client_id, user_id), then cut into requests of
at most 25 events and under 130 kB; requests go out a few at a time.

GA4 answers 2xx even to data it drops, so the mapping (``mapping.py``) and the
rules (``rules.py``) fix or refuse events before they leave. With
``validate = true`` each request first goes to ``/debug/mp/collect``; events
its ``validationMessages`` point at are permanent failures, the rest are sent.
Responses: 2xx delivered; 413 halves the request; 429, 408 and 5xx retry
(Retry-After honoured); 401/403 (a proxy's: GA4 itself does not check the
secret) are permanent, naming the settings to check.

Events delivered with changes made to fit GA4's rules are counted per reason
(``rules.ADJUSTED_*``) in ``eventd_adjusted_events_total``; a retried event counts
once, when it gets through.

Erasure: the Measurement Protocol cannot delete, so ``delete_user`` answers
*unsupported*, naming the ids to delete through Google's User Deletion API or
the property's Admin > Data deletion requests.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from eventd import (
    HTTP_SETTINGS,
    OK,
    TOO_LARGE,
    DeletionOutcome,
    Erasure,
    Event,
    HttpDestination,
    Ok,
    Outcome,
    Permanent,
    Response,
    Retry,
    Unsupported,
    classify,
    deliver_halving,
    hookimpl,
    json_dumps,
)

from .mapping import Ga4Event, map_message
from .rules import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST

REGION_ENDPOINTS = {
    "global": "https://www.google-analytics.com",
    # Google's EU collection endpoint: data is collected in the EU.
    "eu": "https://region1.google-analytics.com",
}
# Requests in flight at once within one deliver() call (one per client group).
CONCURRENCY = 4
_JSON = {"Content-Type": "application/json"}
_INDEX = re.compile(r"(?:index: \[|events\[)(\d+)\]")


class GoogleAnalytics4(HttpDestination):
    type_name = "ga4"
    integration_name = "Google Analytics 4"
    description = "Google Analytics 4 Measurement Protocol: events, ecommerce, page views"
    regions = REGION_ENDPOINTS
    max_batch_events = MAX_EVENTS_PER_REQUEST
    max_batch_bytes = MAX_BODY_BYTES
    settings_schema = {
        "type": "object",
        "required": ["measurement_id", "api_secret"],
        "additionalProperties": False,
        "properties": {
            "measurement_id": {
                "type": "string",
                "pattern": "^G-[A-Z0-9]{4,20}$",
                "description": "the web stream's Measurement ID (G-XXXXXXXXXX)",
            },
            "api_secret": {
                "type": "string",
                "minLength": 1,
                "description": "a Measurement Protocol API secret of that stream",
            },
            "client_id_from": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$",
                "description": "dotted path to GA's client id (properties.x, traits.x,"
                " context.traits.x; a bare name is looked up in properties, traits,"
                " context.traits); else anonymousId, else userId",
            },
            "validate": {
                "type": "boolean",
                "default": False,
                "description": "send each request to /debug/mp/collect first; events it"
                " reports are dead-lettered with its validationMessages",
            },
            "region": {
                "enum": sorted(REGION_ENDPOINTS),
                "default": "global",
                "description": "collection endpoint: global or eu (region1)",
            },
            **HTTP_SETTINGS,
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        self.client_id_from: str | None = self.settings.get("client_id_from")
        self.validate = bool(self.settings["validate"])
        self._secret = str(self.settings["api_secret"])
        self._query = urllib.parse.urlencode(
            {"measurement_id": self.settings["measurement_id"], "api_secret": self._secret}
        )

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        anonymous = ", ".join(erasure.anonymous_ids) or "none known"
        return Unsupported(
            "GA4's Measurement Protocol cannot delete: in Google Analytics, property "
            f"{self.settings['measurement_id']}'s stream, delete the user with the User "
            "Deletion API (userDeletionRequests:upsert, OAuth scope analytics.user.deletion) "
            "or the user explorer, by user_id: "
            + ", ".join(erasure.user_ids)
            + f"; and by client_id ({self.client_id_from or 'the anonymousId'}, as eventd "
            f"sends it): {anonymous}"
        )

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome]:
        now = time.time()
        outcomes: dict[int, Outcome] = {}
        mapped: dict[int, Ga4Event] = {}  # by seq, unique within a batch
        groups: dict[tuple[str, str | None], list[Event]] = {}
        for event in batch:
            result = map_message(event.message, client_id_from=self.client_id_from, now=now)
            if isinstance(result, Ga4Event):
                mapped[event.seq] = result
                groups.setdefault((result.client_id, result.user_id), []).append(event)
            else:
                outcomes[event.seq] = result

        slots = asyncio.Semaphore(CONCURRENCY)

        async def send_request(events: list[Event]) -> None:
            async with slots:
                results = await deliver_halving(
                    events, lambda part: self._post([mapped[e.seq] for e in part])
                )
            outcomes.update(zip((e.seq for e in events), results, strict=True))

        await asyncio.gather(
            *(send_request(part) for group in groups.values() for part in _requests(group, mapped))
        )
        # Only what got through: a retried event is mapped again when it is resent.
        self.count_adjusted(
            collections.Counter(
                reason
                for seq, event in mapped.items()
                if isinstance(outcomes[seq], Ok)
                for reason in event.adjustments
            )
        )
        return [self.scrub(outcomes[e.seq]) for e in batch]

    # -- one request ------------------------------------------------------------------

    async def _post(self, events: list[Ga4Event]) -> Sequence[Outcome] | Outcome | None:
        """Send one request; per-event outcomes, or TOO_LARGE to have it halved."""
        body = _body(events)
        if len(body) >= MAX_BODY_BYTES:
            return TOO_LARGE  # GA4 would refuse it: halve without a round trip
        refused: dict[int, str] = {}
        if self.validate:
            checked = await self._validate(body, len(events))
            if not isinstance(checked, dict):
                return checked  # an outcome for all, or TOO_LARGE
            refused = checked
            if len(refused) == len(events):
                return [Permanent(refused[i]) for i in range(len(events))]
            if refused:
                body = _body([e for i, e in enumerate(events) if i not in refused])
        resp = await self.send(
            "POST", f"{self.endpoint}/mp/collect?{self._query}", data=body, headers=_JSON
        )
        sent = resp if isinstance(resp, Retry) else self._classify(resp)
        if sent is None:
            # Too large: the halves are validated again, so refused events stay refused.
            return TOO_LARGE
        return [Permanent(refused[i]) if i in refused else sent for i in range(len(events))]

    async def _validate(self, body: bytes, count: int) -> dict[int, str] | Outcome | None:
        """Ask /debug/mp/collect; {event index: reason} for the events it reports."""
        resp = await self.send(
            "POST", f"{self.endpoint}/debug/mp/collect?{self._query}", data=body, headers=_JSON
        )
        if isinstance(resp, Retry):
            return resp
        outcome = self._classify(resp)
        if outcome is not OK:
            return outcome
        try:
            messages = orjson.loads(resp.body).get("validationMessages") or []
        except (orjson.JSONDecodeError, AttributeError):
            return Retry(
                f"the validation server answered something that is not JSON: {resp.text(200)}"
            )
        reasons: dict[int, list[str]] = {}
        everyone: list[str] = []
        for msg in messages if isinstance(messages, list) else []:
            if not isinstance(msg, Mapping):
                continue
            text = (
                f"{msg.get('validationCode', 'INVALID')} at {msg.get('fieldPath', '?')}: "
                f"{msg.get('description', '')}"
            )
            found = _INDEX.search(f"{msg.get('fieldPath', '')} {msg.get('description', '')}")
            index = int(found.group(1)) if found else None
            if index is not None and index < count:
                reasons.setdefault(index, []).append(text)
            else:
                everyone.append(text)  # about the request (client_id, ...): every event fails
        return {
            i: "GA4 validation: " + "; ".join(everyone + reasons.get(i, []))
            for i in range(count)
            if everyone or i in reasons
        }

    def _classify(self, resp: Response) -> Outcome | None:
        return classify(resp, refused=self._refused, halve=True)

    def _refused(self, resp: Response) -> Permanent:
        return Permanent(
            f"HTTP {resp.status} from {self.endpoint}: the request was refused; check"
            f" measurement_id and api_secret (and any proxy in between): {resp.text(200)}"
        )

    # -- helpers ------------------------------------------------------------------------


def _body(events: list[Ga4Event]) -> bytes:
    head = events[0]
    body: dict[str, Any] = {"client_id": head.client_id}
    if head.user_id is not None:
        body["user_id"] = head.user_id
    body["events"] = [e.event for e in events]
    return json_dumps(body)


def _requests(group: list[Event], mapped: Mapping[int, Ga4Event]) -> list[list[Event]]:
    """Cut one client's events into requests of at most 25 events and under 130 kB."""
    parts: list[list[Event]] = []
    current: list[Event] = []
    size = 0
    for event in group:
        length = len(json_dumps(mapped[event.seq].event)) + 1
        if current and (
            len(current) >= MAX_EVENTS_PER_REQUEST or size + length >= MAX_BODY_BYTES - 1024
        ):
            parts.append(current)
            current, size = [], 0
        current.append(event)
        size += length
    if current:
        parts.append(current)
    return parts


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [GoogleAnalytics4]
