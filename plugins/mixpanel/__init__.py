"""The ``mixpanel`` destination: Segment calls into Mixpanel's ingestion API.

Events go to ``/import`` (``strict=1``, Basic auth: the service account with
``?project_id=``, else the project token as username), profile updates to
``/engage`` and group profiles to ``/groups`` (``verbose=1``); the mapping is in
:mod:`.mapping`. Answers, per item:

    /import 2xx ................ ok
    /import 400 failed_records . those events permanent (the rest were imported)
    /engage, /groups 200 ....... ok when ``status`` is 1; 0 means none was valid
    401, 403 ................... permanent: the credentials (reason says which)
    413 ........................ split in halves and resent (deliver_halving)
    408, 429, 5xx, network ..... retry (Retry-After honoured when sent)

A call that is several items (identify: $set and $identify) gets the most
pressing of its items' outcomes. Secrets never appear in reasons.

Erasure (``delete_user``): every distinct_id of the person (their userIds and
anonymousIds, as events carry them). With ``gdpr_oauth_token``, Mixpanel's GDPR
API deletes events and profiles (``POST /api/app/data-deletions/v3.0/?token=``,
Bearer token, 2,000 ids a request): done once Mixpanel has the task. Without it
only the profiles can go (``$delete`` on ``/engage`` with the project token):
they are deleted and the erasure is reported *unsupported*, saying the events
stay until someone deletes them in Mixpanel or sets the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import aiohttp

from eventd import (
    HTTP_SETTINGS,
    OK,
    TOO_LARGE,
    ConfigError,
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
    hookimpl,
    json_body,
    json_dumps,
    scrub,
    worst,
)

from ..segment_message import PAGE_EVENT_NAME_SETTING, check_page_event_name
from .mapping import ENDPOINTS, ENGAGE, IMPORT, Mapped, Options, map_message

REGIONS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
# The GDPR API is on the application's hosts, not the ingestion ones.
GDPR_HOSTS = {
    "us": "https://mixpanel.com",
    "eu": "https://eu.mixpanel.com",
    "in": "https://in.mixpanel.com",
}
GDPR_DELETIONS = "/api/app/data-deletions/v3.0/"
MAX_DELETION_IDS = 2000  # distinct_ids per deletion task
JSON = {"Content-Type": "application/json"}
_SERVICE_ACCOUNT = ("service_account_username", "service_account_secret", "project_id")


class Mixpanel(HttpDestination):
    regions = REGIONS
    type_name = "mixpanel"
    integration_name = "Mixpanel"
    description = "Mixpanel: events via /import, user and group profiles via /engage, /groups"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["project_token"],
        "additionalProperties": False,
        "dependentRequired": {k: [o for o in _SERVICE_ACCOUNT if o != k] for k in _SERVICE_ACCOUNT},
        "properties": {
            "project_token": {
                "type": "string",
                "minLength": 1,
                "description": "project token (profiles; /import auth without a service account)",
            },
            "service_account_username": {
                "type": "string",
                "minLength": 1,
                "description": "service account for /import (with secret and project_id)",
            },
            "service_account_secret": {
                "type": "string",
                "minLength": 1,
                "description": "the service account's secret",
            },
            "project_id": {"type": ["string", "integer"], "description": "for the service account"},
            "region": {
                "type": "string",
                "enum": sorted(REGIONS),
                "default": "us",
                "description": "data residency: api, api-eu or api-in.mixpanel.com",
            },
            "gdpr_oauth_token": {
                "type": "string",
                "minLength": 1,
                "description": "GDPR API OAuth token: erasures delete events and profiles "
                "(else only profiles, with $delete)",
            },
            "page_event_name": PAGE_EVENT_NAME_SETTING,
            "group_key": {
                "type": "string",
                "minLength": 1,
                "description": "group key for group calls (Group Analytics); unset: skipped",
            },
            "alias_event": {
                "type": "string",
                "enum": ["$create_alias", "$merge", "none"],
                "default": "$create_alias",
                "description": "what alias calls become; $merge needs a service account",
            },
            **HTTP_SETTINGS,
        },
    }
    max_batch_events = 2000  # /import and /engage take 2,000 items a request
    max_batch_bytes = 8_000_000  # under /import's 10 MB: mapped events are a bit larger

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        s = self.settings
        self.options = Options(
            project_token=s["project_token"],
            page_event_name=s["page_event_name"],
            group_key=s.get("group_key"),
            alias_event=s["alias_event"],
        )
        self.import_params = {"strict": "1"}
        if s.get("service_account_username"):
            authorization = aiohttp.encode_basic_auth(
                s["service_account_username"], s["service_account_secret"]
            )
            self.import_params["project_id"] = str(s["project_id"])
            self.credentials = "service_account_username/service_account_secret/project_id"
        else:
            authorization = aiohttp.encode_basic_auth(s["project_token"], "")
            self.credentials = "project_token"
        self.import_headers = {**JSON, "Authorization": authorization}
        self.secrets = [
            s["project_token"],
            s.get("service_account_secret") or "",
            s.get("gdpr_oauth_token") or "",
        ]

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        check_page_event_name(name, settings)
        if settings.get("alias_event") == "$merge" and not settings.get("service_account_username"):
            raise ConfigError(
                f"destinations.{name}.settings.alias_event = '$merge': Mixpanel takes $merge "
                "only from a service account: set service_account_username, "
                "service_account_secret and project_id"
            )

    async def deliver(self, batch: Sequence[Event]) -> list[Outcome]:
        parts: list[list[Outcome]] = [[] for _ in batch]
        todo: dict[str, list[int]] = {endpoint: [] for endpoint in ENDPOINTS}
        items: dict[str, dict[int, dict[str, Any]]] = {endpoint: {} for endpoint in ENDPOINTS}
        for i, event in enumerate(batch):
            mapped: Mapped | Skip = map_message(event.message, event.received_at, self.options)
            if isinstance(mapped, Skip):
                parts[i].append(mapped)
                continue
            for endpoint, item in mapped.items():
                todo[endpoint].append(i)
                items[endpoint][event.seq] = item

        async def run(endpoint: str) -> None:
            if not todo[endpoint]:
                return
            events = [batch[i] for i in todo[endpoint]]
            send = partial(self._post, endpoint, items[endpoint])
            for i, outcome in zip(todo[endpoint], await deliver_halving(events, send), strict=True):
                parts[i].append(outcome)

        # The endpoints are independent (Mixpanel links a profile and its events by id).
        await asyncio.gather(*(run(endpoint) for endpoint in ENDPOINTS))
        return [worst(p) for p in parts]

    async def _post(
        self, endpoint: str, items: dict[int, dict[str, Any]], events: Sequence[Event]
    ) -> Sequence[Outcome] | Outcome | None:
        body = json_dumps([items[e.seq] for e in events])
        url = f"{self.endpoint}/{endpoint}"
        if endpoint == IMPORT:
            resp = await self.send(
                "POST", url, params=self.import_params, data=body, headers=self.import_headers
            )
            if isinstance(resp, Retry):
                return resp
            return scrub(self._import_answer(resp, len(events)), self.secrets)
        # ip=0: do not geolocate profiles from eventd's own address ($ip carries the user's).
        resp = await self.send(
            "POST", url, params={"verbose": "1", "ip": "0"}, data=body, headers=JSON
        )
        if isinstance(resp, Retry):
            return resp
        return scrub(self._profile_answer(endpoint, resp), self.secrets)

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        ids = list(dict.fromkeys([*erasure.user_ids, *erasure.anonymous_ids]))
        token = self.settings.get("gdpr_oauth_token")
        if token:
            for i in range(0, len(ids), MAX_DELETION_IDS):
                outcome = await self._gdpr_delete(token, ids[i : i + MAX_DELETION_IDS])
                if outcome is not OK:
                    return outcome
            return OK
        updates = [
            {
                "$token": self.options.project_token,
                "$distinct_id": d,
                "$delete": "",
                "$ignore_alias": False,
            }
            for d in ids
        ]
        resp = await self.send(
            "POST",
            f"{self.endpoint}/{ENGAGE}",
            params={"verbose": "1"},
            data=json_dumps(updates),
            headers=JSON,
        )
        answer = resp if isinstance(resp, Retry) else self._profile_answer(ENGAGE, resp)
        if answer is TOO_LARGE:  # not with a person's few ids
            answer = Permanent("Mixpanel /engage refused the $delete request as too large")
        scrubbed = scrub(answer, self.secrets)
        if isinstance(scrubbed, Retry | Permanent):
            return scrubbed
        return Unsupported(
            f"Mixpanel deleted the {len(ids)} profile(s) ($delete), not the events: Mixpanel "
            "deletes events only through its GDPR API, which takes a GDPR OAuth token (set "
            f"destinations.{self.name}.settings.gdpr_oauth_token and erase again), or in "
            "Mixpanel's Data & Privacy settings (Delete End User Data) for these distinct_ids: "
            + ", ".join(ids)
        )

    async def _gdpr_delete(self, token: str, ids: list[str]) -> DeletionOutcome:
        base = self.settings.get("endpoint") or GDPR_HOSTS[self.settings["region"]]
        resp = await self.send(
            "POST",
            base.rstrip("/") + GDPR_DELETIONS,
            params={"token": self.options.project_token},
            data=json_dumps({"distinct_ids": ids, "compliance_type": "GDPR"}),
            headers={**JSON, "Authorization": f"Bearer {token}"},
        )
        if isinstance(resp, Retry):
            return resp
        error = json_body(resp.body).get("error") or resp.text(300)
        if resp.status in (401, 403):
            return Permanent(
                f"Mixpanel's GDPR API refused the token (HTTP {resp.status}: {error}): check "
                f"destinations.{self.name}.settings.gdpr_oauth_token (it expires after a year) "
                "and that its owner administers the project"
            )
        outcome = classify(resp)
        if isinstance(outcome, Permanent):
            outcome = Permanent(f"Mixpanel's GDPR API refused the deletion: {outcome.reason}")
        scrubbed = scrub(outcome, self.secrets)
        assert isinstance(scrubbed, Ok | Retry | Permanent)
        return scrubbed

    def _import_answer(self, resp: Response, count: int) -> Sequence[Outcome] | Outcome | None:
        status = resp.status
        if 200 <= status < 300:
            return OK
        body = json_body(resp.body)
        error = str(body.get("error") or resp.text(300))
        if status == 400:
            failed = body.get("failed_records")
            if isinstance(failed, list) and failed:
                # strict=1: the events not listed were imported.
                outcomes: list[Outcome] = [OK] * count
                for record in failed:
                    index = record.get("index") if isinstance(record, dict) else None
                    if isinstance(index, int) and 0 <= index < count:
                        field = record.get("field") or "event"
                        outcomes[index] = Permanent(
                            f"Mixpanel rejected the event ({field}): {record.get('message')}"
                        )
                return outcomes
            return Permanent(f"Mixpanel /import refused the request (HTTP 400): {error}")
        return classify(
            resp, refused=lambda r: self._credentials_refused(r.status, error), halve=True
        )

    def _profile_answer(self, endpoint: str, resp: Response) -> Outcome | None:
        if 200 <= resp.status < 300:
            body = json_body(resp.body)
            # verbose=1 answers {"status": 1|0, "error": ...}; without it a bare 1 or 0.
            status = body.get("status", resp.text(10).strip())
            if status in (1, "1"):
                return OK
            error = body.get("error") or "no valid update in the request"
            return Permanent(f"Mixpanel /{endpoint} rejected the update: {error}")
        return classify(
            resp,
            refused=lambda r: self._credentials_refused(r.status, json_body(r.body).get("error")),
            halve=True,
        )

    def _credentials_refused(self, status: int, error: Any) -> Permanent:
        return Permanent(
            f"Mixpanel refused the credentials (HTTP {status}: {error}): check "
            f"destinations.{self.name}.settings {self.credentials} and region"
        )


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [Mixpanel]
