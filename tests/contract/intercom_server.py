"""An Intercom REST API server that keeps Intercom's rules and state, for end-to-end tests.

What it enforces, as Intercom's API reference describes it:
- ``Authorization: Bearer <token>`` on every request, else 401 with
  ``{"type": "error.list", "errors": [{"code": "unauthorized", ...}]}``;
  an unknown ``Intercom-Version`` is a 400;
- a rate limit per window: every answer carries ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds); over
  the limit, 429 ``rate_limit_exceeded``;
- contacts: ``POST /contacts`` (role user or lead; a user needs external_id or
  email; custom attributes must exist in the workspace; timestamps are Unix
  seconds), 409 ``conflict`` "A contact matching those details already exists
  with id=..." for a taken external_id (or email, without one);
  ``PUT /contacts/{id}``; ``POST /contacts/search`` (``{"query": {field,
  operator: "=", value}}``);
- data events: ``POST /events`` needs event_name, created_at (seconds) and
  user_id, id or email of a known contact (else 404 "User Not Found"); flat
  metadata (rich links and monetary amounts aside); 202 with no body. Like
  Intercom it keeps only 10 metadata keys, and notes it in ``problems``;
- companies: ``POST /companies`` creates or updates by ``company_id``;
  ``POST /contacts/{id}/companies`` with ``{"id": company}`` attaches;
- data privacy: ``POST /user_delete_requests`` with ``{"intercom_user_id": id}``
  permanently deletes that contact with its events and company links (404 "User
  Not Found" for an unknown id, 400 without the id) and answers ``{"id": n}``
  (the request's id); ``deleted`` lists the contacts deleted.

State is kept (``contacts``, ``companies``, ``attached``, ``events``) so tests
assert exact results. ``problems`` lists what Intercom would accept but
garble (millisecond timestamps, metadata keys past 10). ``script`` injects
answers before any rule, one per request: ``"429"`` (a rate limit answer with
the real headers, reset ``reset_in`` seconds ahead) or ``(status, body)``.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness import free_port

VERSIONS = frozenset({*(f"1.{n}" for n in range(5)), *(f"2.{n}" for n in range(15)), "Unstable"})
CONTACT_FIELDS = frozenset(
    [
        "role",
        "external_id",
        "email",
        "phone",
        "name",
        "avatar",
        "signed_up_at",
        "last_seen_at",
        "owner_id",
        "unsubscribed_from_emails",
        "custom_attributes",
    ]
)
COMPANY_FIELDS = frozenset(
    [
        "company_id",
        "name",
        "plan",
        "size",
        "website",
        "industry",
        "monthly_spend",
        "remote_created_at",
        "custom_attributes",
    ]
)
TIMESTAMPS = ("signed_up_at", "last_seen_at", "remote_created_at", "created_at")
RICH = ({"url", "value"}, {"amount", "currency"})
MAX_METADATA = 10


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": "error.list",
        "request_id": os.urandom(8).hex(),
        "errors": [{"code": code, "message": message}],
    }
    return web.json_response(body, status=status, headers=headers)


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = error(status, code, message)


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int
    at: float  # time.time() when it arrived
    version: str | None  # the Intercom-Version header


@dataclass
class IntercomServer:
    token: str = "tok_intercom_for_tests"
    contact_attributes: frozenset[str] = frozenset({"plan", "logins", "vip"})
    company_attributes: frozenset[str] = frozenset({"tier"})
    rate_limit: int = 10_000
    window: int = 10  # seconds; windows start at multiples of it, so resets are whole seconds
    reset_in: float = 1.0  # how far ahead a scripted 429 puts X-RateLimit-Reset
    port: int = field(default_factory=free_port)
    script: collections.deque[Any] = field(default_factory=collections.deque)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    companies: dict[str, dict[str, Any]] = field(default_factory=dict)
    attached: set[tuple[str, str]] = field(default_factory=set)  # (contact id, company id)
    events: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _window_start: float = 0.0
    _used: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # -- for tests ----------------------------------------------------------------------

    def contact(self, external_id: str) -> dict[str, Any]:
        with self.cond:
            found = [c for c in self.contacts.values() if c.get("external_id") == external_id]
        assert len(found) == 1, f"{len(found)} contacts with external_id={external_id}"
        return found[0]

    def statuses(self, path: str) -> list[int]:
        with self.cond:
            return [c.status for c in self.calls if c.path == path]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError("intercom server condition not met")

    # -- the API --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ValueError
        version = request.headers.get("Intercom-Version")
        call = Call(request.method, request.path, body, 0, time.time(), version)
        with self.cond:
            resp = self._answer(request, call)
            call.status = resp.status
            self.calls.append(call)
            self.cond.notify_all()
        return resp

    def _answer(self, request: web.Request, call: Call) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "Access Token Invalid")
        version = request.headers.get("Intercom-Version")
        if version is not None and version not in VERSIONS:
            return error(
                400, "intercom_version_invalid", "The requested version could not be found"
            )
        limits = self._limit()
        if self.script:
            action = self.script.popleft()
            if action == "429":
                reset = str(math.ceil(time.time() + self.reset_in))
                return error(
                    429,
                    "rate_limit_exceeded",
                    "You have exceeded the rate limit.",
                    {**limits, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
                )
            status, payload = action
            return web.json_response(payload, status=status, headers=limits)
        if int(limits["X-RateLimit-Remaining"]) < 0:
            limits["X-RateLimit-Remaining"] = "0"
            return error(429, "rate_limit_exceeded", "You have exceeded the rate limit.", limits)
        if call.body is ValueError:
            return error(400, "bad_request", "The request body is not valid JSON")
        try:
            status, payload = self._route(request.method, request.path, call.body)
        except Refused as exc:
            exc.response.headers.update(limits)
            return exc.response
        if payload is None:
            return web.Response(status=status, headers=limits)
        return web.json_response(payload, status=status, headers=limits)

    def _limit(self) -> dict[str, str]:
        now = time.time()
        start = now - now % self.window
        if start != self._window_start:
            self._window_start, self._used = start, 0
        self._used += 1
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(self.rate_limit - self._used),
            "X-RateLimit-Reset": str(int(start + self.window)),
        }

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["contacts"]:
            return 200, self._create_contact(body)
        if method == "POST" and parts == ["contacts", "search"]:
            return 200, self._search(body)
        if method == "PUT" and len(parts) == 2 and parts[0] == "contacts":
            return 200, self._update_contact(parts[1], body)
        if (
            method == "POST"
            and len(parts) == 3
            and parts[0] == "contacts"
            and parts[2] == "companies"
        ):
            return 200, self._attach(parts[1], body)
        if method == "POST" and parts == ["events"]:
            self._event(body)
            return 202, None
        if method == "POST" and parts == ["companies"]:
            return 200, self._company(body)
        if method == "POST" and parts == ["user_delete_requests"]:
            return 200, self._delete_user(body)
        raise Refused(404, "route_not_found", f"{method} {path} is not a route")

    # -- contacts --------------------------------------------------------------------------

    def _check_contact(self, body: Any, *, creating: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(400, "parameter_invalid", "The body must be a JSON object")
        unknown = sorted(set(body) - CONTACT_FIELDS)
        if unknown:
            raise Refused(400, "parameter_invalid", f"Unknown parameter: {unknown[0]}")
        role = body.get("role", "user" if not creating else None)
        if role not in ("user", "lead"):
            raise Refused(400, "parameter_invalid", "role must be one of user, lead")
        if creating and role == "user" and not body.get("external_id") and not body.get("email"):
            raise Refused(400, "parameter_invalid", "A user needs an email or an external_id")
        for key in ("external_id", "email", "phone", "name", "avatar"):
            if key in body and not isinstance(body[key], str):
                raise Refused(400, "parameter_invalid", f"{key} must be a string")
        self._check_timestamps(body)
        self._check_attributes(body.get("custom_attributes"), self.contact_attributes)
        return body

    def _check_timestamps(self, body: dict[str, Any]) -> None:
        for key in TIMESTAMPS:
            if key not in body:
                continue
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise Refused(400, "parameter_invalid", f"{key} must be a Unix timestamp")
            if value > 100_000_000_000:
                self.problems.append(f"{key}={value} looks like milliseconds, not seconds")

    def _check_attributes(self, attributes: Any, known: frozenset[str]) -> None:
        if attributes is None:
            return
        if not isinstance(attributes, dict):
            raise Refused(400, "parameter_invalid", "custom_attributes must be an object")
        for key, value in attributes.items():
            if key not in known:
                raise Refused(
                    400, "parameter_not_found", f"Custom attribute '{key}' does not exist"
                )
            if value is not None and not isinstance(value, str | int | float | bool):
                raise Refused(400, "parameter_invalid", f"Custom attribute '{key}' must be flat")

    def _conflict(self, body: dict[str, Any], except_id: str | None = None) -> str | None:
        for cid, c in self.contacts.items():
            if cid == except_id:
                continue
            if body.get("external_id") and c.get("external_id") == body["external_id"]:
                return cid
            if (
                not body.get("external_id")
                and body.get("email")
                and c.get("role") == "user"
                and c.get("email") == body["email"]
            ):
                return cid
        return None

    def _create_contact(self, body: Any) -> dict[str, Any]:
        body = self._check_contact(body, creating=True)
        existing = self._conflict(body)
        if existing is not None:
            raise Refused(
                409,
                "conflict",
                f"A contact matching those details already exists with id={existing}",
            )
        cid = os.urandom(12).hex()
        contact = {"type": "contact", "id": cid, "custom_attributes": {}, **body}
        contact["custom_attributes"] = dict(body.get("custom_attributes") or {})
        self.contacts[cid] = contact
        return contact

    def _update_contact(self, cid: str, body: Any) -> dict[str, Any]:
        if cid not in self.contacts:
            raise Refused(404, "not_found", "User Not Found")
        body = self._check_contact(body, creating=False)
        existing = self._conflict(body, except_id=cid)
        if existing is not None:
            raise Refused(
                409,
                "conflict",
                f"A contact matching those details already exists with id={existing}",
            )
        contact = self.contacts[cid]
        attributes = {**contact["custom_attributes"], **(body.get("custom_attributes") or {})}
        contact.update(body)
        contact["custom_attributes"] = attributes
        return contact

    def _search(self, body: Any) -> dict[str, Any]:
        query = body.get("query") if isinstance(body, dict) else None
        if (
            not isinstance(query, dict)
            or query.get("operator") != "="
            or query.get("field") not in ("id", "external_id", "email")
        ):
            raise Refused(400, "parameter_invalid", "query must be {field, operator: '=', value}")
        found = [c for c in self.contacts.values() if c.get(query["field"]) == query.get("value")]
        return {
            "type": "list",
            "data": found,
            "total_count": len(found),
            "pages": {"type": "pages", "page": 1, "per_page": 50, "total_pages": 1},
        }

    # -- events ------------------------------------------------------------------------------

    def _event(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise Refused(400, "parameter_invalid", "The body must be a JSON object")
        if not isinstance(body.get("event_name"), str) or not body["event_name"]:
            raise Refused(400, "parameter_invalid", "event_name is required")
        if "created_at" not in body:
            raise Refused(400, "parameter_invalid", "created_at is required")
        self._check_timestamps(body)
        who = [(k, body[k]) for k in ("id", "user_id", "email") if body.get(k)]
        if not who:
            raise Refused(400, "parameter_invalid", "One of user_id, id or email is required")
        key, value = who[0]
        field_name = {"user_id": "external_id"}.get(key, key)
        contact = next((c for c in self.contacts.values() if c.get(field_name) == value), None)
        if contact is None:
            raise Refused(404, "not_found", "User Not Found")
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise Refused(400, "parameter_invalid", "metadata must be an object")
        for name, item in metadata.items():
            if re.search(r"[.$]", name):
                raise Refused(400, "parameter_invalid", f"metadata key {name!r} has '.' or '$'")
            if isinstance(item, dict) and set(item) in RICH:
                continue
            if item is not None and not isinstance(item, str | int | float | bool):
                raise Refused(400, "parameter_invalid", "Nested metadata is not supported")
        if len(metadata) > MAX_METADATA:
            self.problems.append(f"event metadata has {len(metadata)} keys; Intercom keeps 10")
            metadata = dict(list(metadata.items())[:MAX_METADATA])
        # Intercom treats names case-insensitively and turns '.' and '$' into '-'.
        name = re.sub(r"[.$]", "-", body["event_name"]).lower()
        self.events.append(
            {**body, "event_name": name, "metadata": metadata, "contact": contact["id"]}
        )

    def _delete_user(self, body: Any) -> dict[str, Any]:
        cid = body.get("intercom_user_id") if isinstance(body, dict) else None
        if not isinstance(cid, str) or not cid:
            raise Refused(400, "parameter_invalid", "intercom_user_id is required")
        contact = self.contacts.pop(cid, None)
        if contact is None:
            raise Refused(404, "not_found", "User Not Found")
        self.events[:] = [e for e in self.events if e["contact"] != cid]
        self.attached = {(c, company) for c, company in self.attached if c != cid}
        self.deleted.append(contact)
        return {"id": len(self.deleted)}

    # -- companies -----------------------------------------------------------------------

    def _company(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(400, "parameter_invalid", "The body must be a JSON object")
        unknown = sorted(set(body) - COMPANY_FIELDS)
        if unknown:
            raise Refused(400, "parameter_invalid", f"Unknown parameter: {unknown[0]}")
        if not isinstance(body.get("company_id"), str) or not body["company_id"]:
            raise Refused(400, "parameter_invalid", "company_id is required")
        if "size" in body and (isinstance(body["size"], bool) or not isinstance(body["size"], int)):
            raise Refused(400, "parameter_invalid", "size must be an integer")
        self._check_timestamps(body)
        self._check_attributes(body.get("custom_attributes"), self.company_attributes)
        company = next(
            (c for c in self.companies.values() if c["company_id"] == body["company_id"]), None
        )
        if company is None:
            company = {"type": "company", "id": os.urandom(12).hex(), "custom_attributes": {}}
            self.companies[company["id"]] = company
        attributes = {**company["custom_attributes"], **(body.get("custom_attributes") or {})}
        company.update(body)
        company["custom_attributes"] = attributes
        return company

    def _attach(self, contact_id: str, body: Any) -> dict[str, Any]:
        if contact_id not in self.contacts:
            raise Refused(404, "not_found", "User Not Found")
        company_id = body.get("id") if isinstance(body, dict) else None
        if company_id not in self.companies:
            raise Refused(404, "company_not_found", "Company Not Found")
        self.attached.add((contact_id, str(company_id)))
        return self.companies[str(company_id)]
