"""A Mixpanel ingestion API double that enforces the real API's rules.

It serves ``POST /import``, ``/engage`` and ``/groups`` the way Mixpanel
documents them (docs.mixpanel.com, Ingestion API reference and its OpenAPI
``ingestion.openapi.yaml``), so a destination that passes here is one that
reads Mixpanel's answers right:

``/import``
  - HTTP Basic auth: a service account (``username:secret``) with
    ``?project_id=``, or the project token as username. Wrong → 401
    ``{"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}``;
    a valid service account on another project → 403.
  - ``application/json`` array or ``application/x-ndjson``; gzip allowed.
  - At most 2,000 events and 10 MB uncompressed, else 413 with Mixpanel's body.
  - Each event: ``event``, ``properties.time`` (s or ms, 1971-01-01 to now + 1 h),
    ``properties.distinct_id`` (not a placeholder such as "null"),
    ``properties.$insert_id`` (1-36 letters, digits, dashes), < 255 properties,
    < 1 MB; ``$merge`` only from a service account; ``$create_alias`` needs ``alias``.
  - ``strict=1``: 400 with ``failed_records`` (index, insert_id, field, message)
    and ``num_records_imported``; the valid events are imported (partial success).
    Without it, invalid events are dropped silently with a 200, as Mixpanel does.
``/engage``, ``/groups``
  - JSON array body (or form ``data=``), ≤ 2,000 updates; each needs the project's
    ``$token``, ``$distinct_id`` (or ``$group_key`` + ``$group_id``) and exactly one
    operation (``$set``, ``$set_once``, ``$add``, ``$union``, ``$append``,
    ``$remove``, ``$unset``, ``$delete``) of the right shape.
  - Always 200 for data errors: ``verbose=1`` answers ``{"status": 1|0, "error"}``,
    else ``1``/``0``; 0 means no update was valid. Invalid updates beside valid
    ones are dropped silently (Mixpanel's documented behaviour).

``POST /api/app/data-deletions/v3.0/`` (the GDPR API, gdpr.openapi.yaml)
  - ``Authorization: Bearer <GDPR OAuth token>`` (401 without or with another);
    ``?token=`` the project token (400 without, 403 for another project's).
  - JSON ``{"distinct_ids": [1-2,000 non-empty strings], "compliance_type":
    "GDPR"|"CCPA"}`` (default GDPR), else 400; answers
    ``{"status": "ok", "results": {"task_id": "<uuid>"}}`` and deletes the
    events and profile updates of those distinct_ids (``deletions`` records it).
  - A ``$delete`` update on ``/engage`` removes that profile's earlier updates
    (``deleted_profiles`` records it).

Beyond the rules, tests script failures: ``fail_next(path, status, headers=...)``
answers the next requests to ``path`` with that status and Mixpanel's error body
(a 429 with ``Retry-After``, a 503, ...). Everything accepted is recorded
(``imported``, ``profiles``, ``group_profiles``) with every request's answer
(``requests``).
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness import free_port

STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
ERRORS = {
    401: "Invalid credentials",
    429: "Project exceeded rate limits. Please retry the request with exponential backoff.",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
}
# distinct_id values Mixpanel refuses as the usual signs of an implementation bug.
PLACEHOLDER_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)
PROFILE_OPERATIONS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset")
GDPR_DELETIONS = "/api/app/data-deletions/v3.0/"
MAX_DELETION_IDS = 2000
MIN_TIME_S = 31_536_000  # 1971-01-01
MAX_EVENT_BYTES = 1024 * 1024


@dataclass
class Request:
    """One request as the server answered it."""

    path: str
    status: int
    items: int
    auth: str | None  # "service_account", "project_token" or None (profiles need none)
    query: dict[str, str]


@dataclass
class MixpanelServer:
    project_token: str = "mp_token_5f1e0c9a7b"
    project_id: str = "3141592"
    service_account_username: str = "eventd-test.9c1d2e.mp-service-account"
    service_account_secret: str = "sa_secret_0d9f8e7c6b5a"
    max_events: int = 2000
    max_bytes: int = 10 * 1024 * 1024
    port: int = field(default_factory=free_port)
    imported: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    group_profiles: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    gdpr_token: str = "gdpr_oauth_7e6d5c4b3a"
    deletions: list[dict[str, Any]] = field(default_factory=list)
    deleted_profiles: list[str] = field(default_factory=list)
    _script: dict[str, collections.deque[tuple[int, dict[str, str]]]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- for tests ---------------------------------------------------------------------

    def fail_next(
        self, path: str, status: int, *, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` authenticated requests to ``path`` with ``status``."""
        with self._lock:
            self._script[path].extend([(status, headers or {})] * times)

    def insert_ids(self) -> collections.Counter[str]:
        """$insert_id -> times imported."""
        with self._lock:
            return collections.Counter(e["properties"]["$insert_id"] for e in self.imported)

    def statuses(self, path: str) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if r.path == path]

    # -- the API -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/import", self._import)
        app.router.add_post("/engage", self._engage)
        app.router.add_post("/groups", self._groups)
        app.router.add_post(GDPR_DELETIONS, self._gdpr_delete)
        return app

    def _answer(
        self, request: web.Request, status: int, body: Any, items: int, auth: str | None
    ) -> web.Response:
        with self._lock:
            self.requests.append(Request(request.path, status, items, auth, dict(request.query)))
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/plain")
        return web.json_response(body, status=status)

    def _scripted(self, path: str) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            queue = self._script.get(path)
            return queue.popleft() if queue else None

    async def _import(self, request: web.Request) -> web.StreamResponse:
        def error(status: int, message: str, auth: str | None = None) -> web.Response:
            body = {"code": status, "error": message, "status": STATUS_TEXT[status]}
            return self._answer(request, status, body, 0, auth)

        auth = self._authenticate(request)
        if auth == 401:
            return error(401, ERRORS[401])
        if auth == 403:
            project = request.query["project_id"]
            return error(403, f"service account does not have access to project {project}")
        assert isinstance(auth, str)
        scripted = self._scripted("/import")
        if scripted:
            status, headers = scripted
            resp = error(status, ERRORS.get(status, STATUS_TEXT.get(status, "error")), auth)
            resp.headers.update(headers)
            return resp
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if len(raw) > self.max_bytes:
            return error(413, f"request exceeds max limit of {self.max_bytes} bytes", auth)
        content_type = request.content_type
        try:
            if content_type == "application/x-ndjson":
                records = [json.loads(line) for line in raw.splitlines() if line.strip()]
            elif content_type == "application/json":
                records = json.loads(raw)
            else:
                return error(400, f"unsupported Content-Type {content_type!r}", auth)
        except ValueError:
            return error(400, "unable to parse the request body as JSON", auth)
        if not isinstance(records, list) or not records:
            return error(400, "the request body must be a non-empty array of events", auth)
        if len(records) > self.max_events:
            return error(413, f"request exceeds max limit of {self.max_events} events", auth)

        failed: list[dict[str, Any]] = []
        good: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            problem = check_event(record, service_account=auth == "service_account")
            if problem is None:
                good.append(record)
                continue
            field_name, message = problem
            properties = record.get("properties") if isinstance(record, dict) else None
            insert_id = properties.get("$insert_id", "") if isinstance(properties, dict) else ""
            failed.append(
                {"index": index, "insert_id": insert_id, "field": field_name, "message": message}
            )
        strict = request.query.get("strict") == "1"
        with self._lock:
            self.imported.extend(good)
        if failed and strict:
            body = {
                "code": 400,
                "error": "some data points in the request failed validation",
                "status": STATUS_TEXT[400],
                "num_records_imported": len(good),
                "failed_records": failed,
            }
            return self._answer(request, 400, body, len(records), auth)
        body = {"code": 200, "num_records_imported": len(good), "status": "OK"}
        return self._answer(request, 200, body, len(records), auth)

    def _authenticate(self, request: web.Request) -> str | int:
        """ "service_account", "project_token", or the status refusing the request."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return 401
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return 401
        project_id = request.query.get("project_id")
        if project_id is not None:
            if (user, password) != (self.service_account_username, self.service_account_secret):
                return 401
            return "service_account" if project_id == self.project_id else 403
        return "project_token" if user == self.project_token else 401

    async def _engage(self, request: web.Request) -> web.StreamResponse:
        return await self._profiles(request, self.profiles, ("$distinct_id",))

    async def _groups(self, request: web.Request) -> web.StreamResponse:
        return await self._profiles(request, self.group_profiles, ("$group_key", "$group_id"))

    async def _profiles(
        self, request: web.Request, store: list[dict[str, Any]], ids: tuple[str, ...]
    ) -> web.StreamResponse:
        verbose = request.query.get("verbose") == "1"
        scripted = self._scripted(request.path)
        if scripted:
            status, headers = scripted
            message = ERRORS.get(status, STATUS_TEXT.get(status, "error"))
            resp = self._answer(request, status, {"error": message, "status": 0}, 0, None)
            resp.headers.update(headers)
            return resp
        raw = await request.read()
        if len(raw) > self.max_bytes:
            body = {"error": f"request exceeds max limit of {self.max_bytes} bytes", "status": 0}
            return self._answer(request, 413, body, 0, None)
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                form = urllib.parse.parse_qs(raw.decode())
                updates = json.loads(form.get("data", [""])[0])
            else:
                updates = json.loads(raw)
        except ValueError:
            return self._answer(request, 200, self._received(verbose, "invalid JSON"), 0, None)
        if isinstance(updates, dict):
            updates = [updates]
        if not isinstance(updates, list) or not updates:
            return self._answer(request, 200, self._received(verbose, "no data"), 0, None)
        if len(updates) > self.max_events:
            body = {"error": f"request exceeds max limit of {self.max_events} updates", "status": 0}
            return self._answer(request, 413, body, len(updates), None)
        good: list[dict[str, Any]] = []
        first_error: str | None = None
        for update in updates:
            problem = check_update(update, self.project_token, ids)
            if problem is None:
                good.append(update)
            elif first_error is None:
                first_error = problem
        with self._lock:
            store.extend(good)
            for update in good:
                if "$delete" in update:  # the profile goes, with every update made to it
                    gone = update["$distinct_id"]
                    self.deleted_profiles.append(gone)
                    store[:] = [u for u in store if u.get("$distinct_id") != gone]
        answer = self._received(verbose, None if good else first_error)
        return self._answer(request, 200, answer, len(updates), None)

    async def _gdpr_delete(self, request: web.Request) -> web.StreamResponse:
        def error(status: int, message: str) -> web.Response:
            return self._answer(request, status, {"status": "error", "error": message}, 0, None)

        if request.headers.get("Authorization") != f"Bearer {self.gdpr_token}":
            return error(401, "Invalid or expired OAuth token")
        token = request.query.get("token")
        if not token:
            return error(400, "token query parameter is required")
        if token != self.project_token:
            return error(403, "the OAuth token has no access to this project")
        scripted = self._scripted(GDPR_DELETIONS)
        if scripted:
            status, headers = scripted
            resp = error(status, ERRORS.get(status, STATUS_TEXT.get(status, "error")))
            resp.headers.update(headers)
            return resp
        try:
            body = json.loads(await request.read())
        except ValueError:
            return error(400, "the body must be JSON")
        ids = body.get("distinct_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            return error(400, "distinct_ids must be a non-empty array of strings")
        if len(ids) > MAX_DELETION_IDS:
            return error(400, f"at most {MAX_DELETION_IDS} distinct_ids per request")
        compliance = body.get("compliance_type", "GDPR")
        if compliance not in ("GDPR", "CCPA"):
            return error(400, "compliance_type must be GDPR or CCPA")
        task = str(uuid.uuid4())
        gone = set(ids)
        with self._lock:
            self.imported[:] = [
                e for e in self.imported if e["properties"].get("distinct_id") not in gone
            ]
            self.profiles[:] = [u for u in self.profiles if u.get("$distinct_id") not in gone]
            self.deletions.append(
                {"task_id": task, "distinct_ids": ids, "compliance_type": compliance}
            )
        answer = {"status": "ok", "results": {"task_id": task}}
        return self._answer(request, 200, answer, len(ids), "gdpr_oauth_token")

    @staticmethod
    def _received(verbose: bool, error: str | None) -> Any:
        if verbose:
            return {"status": 0 if error else 1, "error": error}
        return "0" if error else "1"


def check_event(record: Any, *, service_account: bool) -> tuple[str, str] | None:
    """(field, message) of the first rule ``record`` breaks, or None."""
    if not isinstance(record, dict):
        return "event", "each event must be a JSON object"
    name = record.get("event")
    if not isinstance(name, str) or not name:
        return "event", "'event' is missing or empty"
    if len(name) > 255:
        return "event", "'event' is longer than 255 characters"
    properties = record.get("properties")
    if not isinstance(properties, dict):
        return "properties", "'properties' must be an object"
    if len(properties) >= 255:
        return "properties", "an event must have fewer than 255 properties"
    if len(json.dumps(record)) >= MAX_EVENT_BYTES:
        return "event", "an event must be smaller than 1MB of uncompressed JSON"
    t = properties.get("time")
    if t is None:
        return "properties.time", "'properties.time' is missing"
    if not isinstance(t, int) or isinstance(t, bool):
        return (
            "properties.time",
            "'properties.time' is invalid: must be specified as seconds since epoch",
        )
    seconds = t / 1000 if t > 100_000_000_000 else t
    if seconds < MIN_TIME_S or seconds > time.time() + 3600:
        return (
            "properties.time",
            "'properties.time' is invalid: must be after 1971-01-01 and at most 1 hour ahead",
        )
    insert_id = properties.get("$insert_id")
    if insert_id is None:
        return "properties.$insert_id", "'properties.$insert_id' is missing"
    if not (
        isinstance(insert_id, str)
        and 1 <= len(insert_id) <= 36
        and all(c.isascii() and (c.isalnum() or c == "-") for c in insert_id)
    ):
        return (
            "properties.$insert_id",
            "'properties.$insert_id' is invalid: 1-36 letters, digits or '-'",
        )
    if name == "$merge":
        if not service_account:
            return "event", "$merge is only accepted with service account authentication"
        ids = properties.get("$distinct_ids")
        if not (
            isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) and i for i in ids)
        ):
            return "properties.$distinct_ids", "'$distinct_ids' must be a list of two ids"
        return None
    distinct_id = properties.get("distinct_id")
    if not isinstance(distinct_id, str):
        return "properties.distinct_id", "'properties.distinct_id' is missing or not a string"
    if distinct_id.lower() in PLACEHOLDER_IDS:
        return (
            "properties.distinct_id",
            f"'properties.distinct_id' is invalid: {distinct_id!r} is a placeholder value",
        )
    if name == "$create_alias":
        alias = properties.get("alias")
        if not isinstance(alias, str) or not alias or alias == distinct_id:
            return "properties.alias", "'alias' must be a new id, different from distinct_id"
    if name == "$identify" and not (
        isinstance(properties.get("$identified_id"), str)
        and isinstance(properties.get("$anon_id"), str)
    ):
        return "properties.$anon_id", "$identify needs $identified_id and $anon_id"
    return None


def check_update(update: Any, token: str, ids: tuple[str, ...]) -> str | None:
    """Why a profile update is invalid, or None."""
    if not isinstance(update, dict):
        return "each update must be a JSON object"
    if update.get("$token") != token:
        return "$token is missing or invalid"
    for key in ids:
        if not isinstance(update.get(key), str) or not update[key]:
            return f"{key} is missing or empty"
    operations = [k for k in update if k in (*PROFILE_OPERATIONS, "$delete")]
    if len(operations) != 1:
        return "an update needs exactly one operation"
    op = operations[0]
    value = update[op]
    if op == "$unset":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "$unset takes a list of property names"
    elif op != "$delete":
        if not isinstance(value, dict) or (not value and op != "$set"):
            return f"{op} takes an object of properties"
        if op == "$union" and not all(isinstance(v, list) for v in value.values()):
            return "$union takes lists of values"
        if op == "$add" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            return "$add takes numbers"
    if len(json.dumps(update)) > MAX_EVENT_BYTES:
        return "an update must be smaller than 1MB"
    return None
