"""An Amplitude ingestion API double that enforces the real API's rules.

It serves ``POST /2/httpapi`` (HTTP V2) and ``POST /batch`` (Batch Event Upload)
as Amplitude documents them (amplitude.com/docs/apis/analytics/http-v2,
batch-event-upload, http-api-batching-retries) and as its own SDKs read the
answers (Amplitude-Python ``http_client.py``/``processor.py``):

- Body ``{api_key, events, options}``, ``Content-Type: application/json``.
  No ``api_key``/``events`` → 400 ``{"code": 400, "error": "Request missing
  required field", "missing_field": ...}``; an unknown key → 400 ``{"code": 400,
  "error": "Invalid API key: <key>"}`` (yes, Amplitude echoes it).
- HTTP V2: at most 2,000 events and 1 MB; Batch: 20 MB. Over → 413
  ``{"code": 413, "error": "Payload too large"}``.
- Each event: ``event_type``; ``user_id`` or ``device_id`` of at least
  ``options.min_id_length`` (default 5) characters; ``time`` an integer of epoch
  ms; no all-zero device id; numeric revenue fields. Any event failing → 400
  naming the events by index in ``events_with_missing_fields`` /
  ``events_with_invalid_fields`` / ``events_with_invalid_id_lengths``, and
  **nothing** of the request is ingested (the docs: "remove those events and
  resend the rest"). On /batch a too-short id is dropped from its event first,
  as that API documents, and only an event left without any id fails.
- ``insert_id`` deduplicates: an event repeating one is acknowledged, not ingested.
- Throttling: ``throttle(id, times)`` answers the next ``times`` requests holding
  that user or device with 429 ``{"code": 429, "error": "Too many requests for
  some devices and users", "eps_threshold", "throttled_users",
  "throttled_devices", "throttled_events": [indices]}``; ``over_quota(id)`` adds
  ``exceeded_daily_quota_users``/``_devices`` for good. A 429 ingests nothing.

The User Privacy API (v1, amplitude.com/docs/apis/analytics/user-privacy),
``POST /api/2/deletions/users``:

- HTTP Basic auth with the project's API key and secret key, else 401.
- A JSON object with ``user_ids`` and/or ``amplitude_ids`` (at most 100 ids in
  all, at least one), ``requester`` a string; ``ignore_invalid_id`` and
  ``delete_from_org`` are the *strings* ``"True"``/``"False"`` (Amplitude reads
  its booleans that way); else 400. A user_id never ingested is a 400 naming it
  unless ``ignore_invalid_id`` is ``"True"``.
- One request a second per project: sooner is a 429.
- 200 with the job: ``{"day": "YYYY-MM-DD", "status": "staging",
  "amplitude_ids": [...], "user_ids": [...]}``; the users' events are deleted
  from ``ingested`` and the job recorded in ``deletions``.

``fail_next(path, status)`` scripts other failures (503...). Accepted events are
recorded in ``ingested`` (by insert_id) and ``deliveries`` (times received in an
accepted request); every answer in ``requests``.
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness import free_port

HTTP_API, BATCH_API = "/2/httpapi", "/batch"
DELETIONS = "/api/2/deletions/users"
MAX_DELETION_IDS = 100
LIMITS = {HTTP_API: 1024 * 1024, BATCH_API: 20 * 1024 * 1024}
EPS_THRESHOLD = {HTTP_API: 30, BATCH_API: 1000}
ZERO_DEVICE = "00000000-0000-0000-0000-000000000000"


@dataclass
class Request:
    """One request as the server answered it."""

    path: str
    status: int
    events: int
    body: dict[str, Any]


@dataclass
class AmplitudeServer:
    api_key: str = "amp_key_3c5e7a9b1d"
    secret_key: str = "amp_secret_8f2e4d6c0b"
    deletion_interval: float = 1.0  # seconds between deletion requests, at least
    max_events: int = 2000
    port: int = field(default_factory=free_port)
    ingested: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[Request] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    _last_deletion: float = 0.0
    _throttled: dict[str, int] = field(default_factory=dict)
    _over_quota: set[str] = field(default_factory=set)
    _script: dict[str, collections.deque[tuple[int, dict[str, str]]]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- for tests ---------------------------------------------------------------------

    def throttle(self, user_or_device: str, times: int = 1) -> None:
        """Throttle the next ``times`` requests that carry this user or device id."""
        with self._lock:
            self._throttled[user_or_device] = times

    def over_quota(self, user_or_device: str) -> None:
        """This user or device has used its daily event quota."""
        with self._lock:
            self._over_quota.add(user_or_device)

    def fail_next(
        self, path: str, status: int, *, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        with self._lock:
            self._script[path].extend([(status, headers or {})] * times)

    def statuses(self, path: str = HTTP_API) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if r.path == path]

    # -- the API -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(HTTP_API, self._upload)
        app.router.add_post(BATCH_API, self._upload)
        app.router.add_post(DELETIONS, self._delete_users)
        return app

    def _answer(self, path: str, status: int, body: dict[str, Any], events: int) -> web.Response:
        with self._lock:
            self.requests.append(Request(path, status, events, body))
        return web.json_response(body, status=status)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        path = request.path

        def error(status: int, message: str, events: int = 0, **extra: Any) -> web.Response:
            return self._answer(path, status, {"code": status, "error": message, **extra}, events)

        raw = await request.read()
        if request.content_type != "application/json":
            return error(400, "Content-Type must be application/json")
        if len(raw) > LIMITS[path]:
            return error(413, "Payload too large")
        try:
            payload = json.loads(raw)
        except ValueError:
            return error(400, "Invalid JSON request body")
        if not isinstance(payload, dict) or not payload.get("api_key"):
            return error(400, "Request missing required field", missing_field="api_key")
        if payload["api_key"] != self.api_key:
            return error(400, f"Invalid API key: {payload['api_key']}")
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            return error(400, "Request missing required field", missing_field="events")
        if len(events) > self.max_events:
            return error(413, "Payload too large", len(events))
        with self._lock:
            scripted = self._script[path].popleft() if self._script.get(path) else None
        if scripted:
            status, headers = scripted
            resp = error(status, "Internal server error" if status >= 500 else "error", len(events))
            resp.headers.update(headers)
            return resp

        options = payload.get("options")
        min_id_length = options.get("min_id_length", 5) if isinstance(options, dict) else 5
        problems = validate(events, min_id_length, drop_short_ids=path == BATCH_API)
        if problems:
            return error(400, problems.pop("error"), len(events), **problems)

        throttled = self._throttle_answer(path, events)
        if throttled:
            return self._answer(path, 429, throttled, len(events))

        with self._lock:
            for event in events:
                key = str(event.get("insert_id") or id(event))
                self.deliveries[key] += 1
                self.ingested.setdefault(key, event)  # a known insert_id is not ingested again
        body = {
            "code": 200,
            "events_ingested": len(events),
            "payload_size_bytes": len(raw),
            "server_upload_time": int(time.time() * 1000),
        }
        return self._answer(path, 200, body, len(events))

    async def _delete_users(self, request: web.Request) -> web.StreamResponse:
        def error(status: int, message: str) -> web.Response:
            return self._answer(DELETIONS, status, {"code": status, "error": message}, 0)

        expected = base64.b64encode(f"{self.api_key}:{self.secret_key}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return error(401, "Invalid API key or secret key")
        with self._lock:
            scripted = self._script[DELETIONS].popleft() if self._script.get(DELETIONS) else None
        if scripted:
            status, headers = scripted
            resp = error(status, "Internal server error" if status >= 500 else "error")
            resp.headers.update(headers)
            return resp
        now = time.monotonic()
        if now - self._last_deletion < self.deletion_interval:
            return error(429, "Too many requests: one deletion request a second")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return error(400, "Invalid JSON request body")
        if not isinstance(body, dict):
            return error(400, "The body must be a JSON object")
        user_ids = body.get("user_ids", [])
        amplitude_ids = body.get("amplitude_ids", [])
        if not isinstance(user_ids, list) or not all(isinstance(u, str) and u for u in user_ids):
            return error(400, "user_ids must be an array of strings")
        if not isinstance(amplitude_ids, list) or not all(
            isinstance(a, int) for a in amplitude_ids
        ):
            return error(400, "amplitude_ids must be an array of integers")
        if not user_ids and not amplitude_ids:
            return error(400, "Request missing required field: user_ids or amplitude_ids")
        if len(user_ids) + len(amplitude_ids) > MAX_DELETION_IDS:
            return error(400, f"At most {MAX_DELETION_IDS} ids per request")
        if "requester" in body and not isinstance(body["requester"], str):
            return error(400, "requester must be a string")
        for flag in ("ignore_invalid_id", "delete_from_org"):
            if flag in body and body[flag] not in ("True", "False"):
                return error(400, f"{flag} must be the string 'True' or 'False'")
        with self._lock:
            known = {e.get("user_id") for e in self.ingested.values()}
            unknown = [u for u in user_ids if u not in known]
            if unknown and body.get("ignore_invalid_id") != "True":
                return error(400, f"Invalid user_ids: {', '.join(unknown)}")
            self._last_deletion = now
            gone = set(user_ids)
            for key in [k for k, e in self.ingested.items() if e.get("user_id") in gone]:
                del self.ingested[key]
            job = {
                "day": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 3 * 86400)),
                "status": "staging",
                "amplitude_ids": amplitude_ids,
                "user_ids": user_ids,
                "requester": body.get("requester"),
            }
            self.deletions.append(job)
        return self._answer(DELETIONS, 200, job, 0)

    def _throttle_answer(self, path: str, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        with self._lock:
            indices: list[int] = []
            users: dict[str, int] = {}
            devices: dict[str, int] = {}
            quota_users: dict[str, int] = {}
            quota_devices: dict[str, int] = {}
            for i, event in enumerate(events):
                hit = False
                for key, rate, quota in (
                    ("user_id", users, quota_users),
                    ("device_id", devices, quota_devices),
                ):
                    value = event.get(key)
                    if not isinstance(value, str):
                        continue
                    if value in self._over_quota:
                        quota[value] = 500_001
                        hit = True
                    elif self._throttled.get(value, 0) > 0:
                        rate[value] = EPS_THRESHOLD[path] + 1
                        hit = True
                if hit:
                    indices.append(i)
            if not indices:
                return None
            for value in (*users, *devices):
                self._throttled[value] -= 1
        return {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": EPS_THRESHOLD[path],
            "throttled_devices": devices,
            "throttled_users": users,
            "throttled_events": indices,
            "exceeded_daily_quota_users": quota_users,
            "exceeded_daily_quota_devices": quota_devices,
        }


def validate(events: list[Any], min_id_length: Any, *, drop_short_ids: bool) -> dict[str, Any]:
    """The 400 body for ``events`` (with its "error"), or {} when all are valid."""
    missing: dict[str, list[int]] = collections.defaultdict(list)
    invalid: dict[str, list[int]] = collections.defaultdict(list)
    short: dict[str, list[int]] = collections.defaultdict(list)
    if not isinstance(min_id_length, int) or min_id_length < 1:
        return {"error": "Invalid options: min_id_length must be a positive integer"}
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            invalid["event"].append(i)
            continue
        if not isinstance(event.get("event_type"), str) or not event["event_type"]:
            missing["event_type"].append(i)
        ids = 0
        for key in ("user_id", "device_id"):
            value = event.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or len(value) < min_id_length:
                if drop_short_ids:
                    continue  # /batch drops the id; the event fails only without any
                short[key].append(i)
            ids += 1
        if ids == 0:
            missing["device_id"].append(i)
        if event.get("device_id") == ZERO_DEVICE:
            invalid["device_id"].append(i)
        t = event.get("time")
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
            invalid["time"].append(i)
        for key in ("event_properties", "user_properties", "group_properties", "groups"):
            if key in event and not isinstance(event[key], dict):
                invalid[key].append(i)
        for key in ("revenue", "price"):
            value = event.get(key)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                invalid[key].append(i)
        quantity = event.get("quantity")
        if quantity is not None and (not isinstance(quantity, int) or isinstance(quantity, bool)):
            invalid["quantity"].append(i)
        if "insert_id" in event and not isinstance(event["insert_id"], str):
            invalid["insert_id"].append(i)
    body: dict[str, Any] = {}
    if missing:
        body["events_with_missing_fields"] = dict(missing)
    if invalid:
        body["events_with_invalid_fields"] = dict(invalid)
    if short:
        body["events_with_invalid_id_lengths"] = dict(short)
    if body:
        body["error"] = (
            "Invalid id length for user_id or device_id"
            if short and not missing and not invalid
            else "Some events are missing required fields or have invalid fields"
        )
    return body
