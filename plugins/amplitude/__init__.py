"""The ``amplitude`` destination: Segment calls into Amplitude's HTTP V2 or Batch API.

Requests are ``POST /2/httpapi`` (or ``/batch`` with ``use_batch_api``) with
``{api_key, events, options}``; the mapping is in :mod:`.mapping`. Amplitude
answers for the whole request, naming the events it refused:

    200 ............................. ok
    400 Invalid API key ............. permanent, all (the reason never repeats the key)
    400 missing_field ............... permanent, all
    400 events_with_* / silenced .... those events permanent; Amplitude took none, so
                                      the others are resent at once without them
    413 ............................. split in halves and resent (deliver_halving)
    429 ............................. retry after Retry-After, else ``throttle_wait``
                                      (Amplitude asks for 30 s); a user or device over
                                      its daily quota is permanent
    408, 5xx, network ............... retry

A call that is several Amplitude events (group) gets the most pressing outcome
of its events.

Erasure (``delete_user``) goes to the User Privacy API (v1,
``POST /api/2/deletions/users`` on amplitude.com or analytics.eu.amplitude.com,
Basic auth with the API key and ``secret_key``, 100 user_ids a request,
``ignore_invalid_id`` so a user Amplitude never saw is no error): done once
Amplitude has scheduled the job. It deletes by user_id (and so every device
Amplitude merged into that user); events only ever sent with a device_id are not
covered. Without ``secret_key`` the erasure is reported unsupported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import aiohttp

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
    Skip,
    Unsupported,
    classify,
    deliver_halving,
    fold,
    hookimpl,
    json_body,
    json_dumps,
    redact,
    retry_after,
    scrub,
)

from ..segment_message import PAGE_EVENT_NAME_SETTING, check_page_event_name
from .mapping import Options, map_message

REGIONS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
# The User Privacy API is on the application's hosts, not the ingestion ones.
PRIVACY_HOSTS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
DELETIONS = "/api/2/deletions/users"
MAX_DELETION_IDS = 100
JSON = {"Content-Type": "application/json", "Accept": "*/*"}
Planned = dict[int, list[dict[str, Any]]]  # event seq -> its Amplitude events

# 400 bodies list refused events by index under these keys; the value is why.
_REFUSALS = {
    "events_with_invalid_fields": "invalid {field}",
    "events_with_missing_fields": "missing {field}",
    "events_with_invalid_id_lengths": "{field} shorter than min_id_length",
}


class Amplitude(HttpDestination):
    regions = REGIONS
    type_name = "amplitude"
    integration_name = "Amplitude"
    description = "Amplitude: events, user and group properties via the HTTP V2 or Batch API"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["api_key"],
        "additionalProperties": False,
        "properties": {
            "api_key": {"type": "string", "minLength": 1, "description": "project API key"},
            "secret_key": {
                "type": "string",
                "minLength": 1,
                "description": "project secret key: erasures use the User Privacy API",
            },
            "region": {
                "type": "string",
                "enum": sorted(REGIONS),
                "default": "us",
                "description": "data residency: api2.amplitude.com or api.eu.amplitude.com",
            },
            "use_batch_api": {
                "type": "boolean",
                "default": False,
                "description": "POST /batch (20 MB, 1,000 events/s per user) instead of /2/httpapi",
            },
            "min_id_length": {
                "type": "integer",
                "minimum": 1,
                "description": "shortest user_id/device_id Amplitude accepts (its default: 5)",
            },
            "group_type": {
                "type": "string",
                "minLength": 1,
                "description": "group type for group calls (Accounts add-on); unset: skipped",
            },
            "page_event_name": PAGE_EVENT_NAME_SETTING,
            "throttle_wait": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 30,
                "description": "seconds to wait after a 429 without Retry-After",
            },
            **HTTP_SETTINGS,
        },
    }
    # A group call is two Amplitude events: 1,000 calls stay within 2,000 events.
    max_batch_events = 1000

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        s = self.settings
        self.options = Options(page_event_name=s["page_event_name"], group_type=s.get("group_type"))
        self.path = "/batch" if s["use_batch_api"] else "/2/httpapi"
        # Requests must stay under 1 MB (HTTP V2) or 20 MB (Batch); mapped events are
        # larger than stored ones (a group call is two), hence the margin.
        self.max_batch_bytes = 16_000_000 if s["use_batch_api"] else 700_000
        self.request_options = (
            {"min_id_length": s["min_id_length"]} if "min_id_length" in s else None
        )
        self.secrets = [s["api_key"], s.get("secret_key") or ""]

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        check_page_event_name(name, settings)

    async def deliver(self, batch: Sequence[Event]) -> list[Outcome]:
        outcomes: list[Outcome] = [OK] * len(batch)
        planned: Planned = {}
        sendable: list[int] = []
        for i, event in enumerate(batch):
            mapped = map_message(event.message, event.received_at, self.options)
            if isinstance(mapped, Skip):
                outcomes[i] = mapped
            else:
                planned[event.seq] = mapped
                sendable.append(i)
        if sendable:
            events = [batch[i] for i in sendable]
            answers = await deliver_halving(events, partial(self._send, planned))
            for i, answer in zip(sendable, answers, strict=True):
                outcomes[i] = answer
        return outcomes

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        secret = self.settings.get("secret_key")
        if not secret:
            return Unsupported(
                "Amplitude deletes users only through its User Privacy API, which needs the "
                f"project's secret key: set destinations.{self.name}.settings.secret_key and "
                "erase again, or delete these user_ids in Amplitude (Settings > Privacy > "
                "User Deletions): " + ", ".join(erasure.user_ids)
            )
        base = self.settings.get("endpoint") or PRIVACY_HOSTS[self.settings["region"]]
        auth = aiohttp.encode_basic_auth(self.settings["api_key"], secret)
        ids = list(erasure.user_ids)
        for i in range(0, len(ids), MAX_DELETION_IDS):
            # Amplitude reads its boolean parameters as the strings "True"/"False".
            body = {
                "user_ids": ids[i : i + MAX_DELETION_IDS],
                "requester": "eventd",
                "ignore_invalid_id": "True",
            }
            resp = await self.send(
                "POST",
                base.rstrip("/") + DELETIONS,
                data=json_dumps(body),
                headers={**JSON, "Authorization": auth},
            )
            outcome = resp if isinstance(resp, Retry) else self._deletion_answer(resp)
            if not isinstance(outcome, Ok):
                return outcome
        return OK

    def _deletion_answer(self, resp: Response) -> Ok | Retry | Permanent:
        if resp.status in (401, 403):
            return Permanent(
                f"Amplitude's User Privacy API refused the keys (HTTP {resp.status}): check "
                f"destinations.{self.name}.settings.api_key, secret_key and region"
            )
        if resp.status == 429 and retry_after(resp.headers) is None:
            # Amplitude allows about one deletion request a second.
            return Retry("Amplitude's User Privacy API is rate limited (HTTP 429)", 1.0)
        outcome = classify(resp)
        if isinstance(outcome, Permanent):
            reason = redact(outcome.reason, self.secrets)
            return Permanent(f"Amplitude's User Privacy API refused the deletion: {reason}")
        if isinstance(outcome, Retry):
            return Retry(redact(outcome.reason, self.secrets), outcome.after)
        return outcome

    async def _send(
        self, planned: Planned, events: Sequence[Event]
    ) -> Sequence[Outcome] | Outcome | None:
        items: list[dict[str, Any]] = []
        owners: list[int] = []
        for k, event in enumerate(events):
            for item in planned[event.seq]:
                items.append(item)
                owners.append(k)
        payload: dict[str, Any] = {"api_key": self.settings["api_key"], "events": items}
        if self.request_options:
            payload["options"] = self.request_options
        resp = await self.send(
            "POST", self.endpoint + self.path, data=json_dumps(payload), headers=JSON
        )
        if isinstance(resp, Retry):
            return resp
        if resp.status == 400:
            return await self._refused(planned, events, items, owners, resp)
        if resp.status == 413:
            return TOO_LARGE
        if resp.status == 429:
            return self._throttled(len(events), items, owners, resp)
        return scrub(classify(resp), self.secrets)

    async def _refused(
        self,
        planned: Planned,
        events: Sequence[Event],
        items: list[dict[str, Any]],
        owners: list[int],
        resp: Response,
    ) -> Sequence[Outcome] | Outcome:
        body = json_body(resp.body)
        error = str(body.get("error") or resp.text(300))
        if error.startswith("Invalid API key"):
            return Permanent(
                f"Amplitude refused the API key (HTTP 400 Invalid API key): check "
                f"destinations.{self.name}.settings.api_key and region"
            )
        if body.get("missing_field"):
            return Permanent(f"Amplitude: the request lacks {body['missing_field']} (HTTP 400)")
        why = refusals(body, len(items))
        if not why:
            return Permanent(
                redact(f"Amplitude refused the request (HTTP 400): {error}", self.secrets)
            )
        answers: list[Outcome] = [
            Permanent(f"Amplitude refused the event: {'; '.join(why[i])} (HTTP 400)")
            if i in why
            else OK
            for i in range(len(items))
        ]
        outcomes = fold(len(events), owners, answers)
        # Amplitude took none of the request: resend the events it did not refuse.
        keep = [k for k, outcome in enumerate(outcomes) if isinstance(outcome, Ok)]
        if keep:
            resent = await deliver_halving([events[k] for k in keep], partial(self._send, planned))
            for k, outcome in zip(keep, resent, strict=True):
                outcomes[k] = outcome
        return outcomes

    def _throttled(
        self, count: int, items: list[dict[str, Any]], owners: list[int], resp: Response
    ) -> list[Outcome]:
        body = json_body(resp.body)
        wait = retry_after(resp.headers)
        if wait is None:
            wait = float(self.settings["throttle_wait"])
        throttled = {i for i in body.get("throttled_events") or [] if isinstance(i, int)}
        over_quota_users = body.get("exceeded_daily_quota_users") or {}
        over_quota_devices = body.get("exceeded_daily_quota_devices") or {}
        answers: list[Outcome] = []
        for i, item in enumerate(items):
            if i in throttled and (
                item.get("user_id") in over_quota_users
                or item.get("device_id") in over_quota_devices
            ):
                answers.append(
                    Permanent("Amplitude: this user or device is over its daily event quota (429)")
                )
            elif i in throttled:
                answers.append(Retry("Amplitude throttled this user or device (HTTP 429)", wait))
            else:
                # Amplitude took none of a throttled request: the others wait as well.
                answers.append(Retry("Amplitude throttled the request (HTTP 429)", wait))
        return fold(count, owners, answers)


def refusals(body: dict[str, Any], count: int) -> dict[int, list[str]]:
    """Item index -> why, from a 400 body's ``events_with_*`` and ``silenced_events``."""
    why: dict[int, list[str]] = {}
    for key, template in _REFUSALS.items():
        fields = body.get(key)
        if not isinstance(fields, dict):
            continue
        for field, indices in fields.items():
            for i in indices if isinstance(indices, list) else []:
                if isinstance(i, int) and 0 <= i < count:
                    why.setdefault(i, []).append(template.format(field=field))
    for i in body.get("silenced_events") or []:
        if isinstance(i, int) and 0 <= i < count:
            why.setdefault(i, []).append("device silenced by Amplitude")
    return why


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [Amplitude]
