"""The ``intercom`` destination: Segment identify, track and group calls into Intercom.

Owns the sequence of REST calls per event (Intercom has no batch API):

- identify: ``POST /contacts``; when Intercom answers 409 (the contact exists,
  its id is in the message) ``PUT /contacts/{id}``, falling back to
  ``POST /contacts/search`` by external_id or email when the message has no id.
  Creating first costs one request for a new contact and two for a known one,
  and never depends on the search index, which lags behind new contacts.
- track: ``POST /events``.
- group: ``POST /companies`` (creates or updates by ``company_id``), then, when
  the message has a userId, finds that contact and ``POST /contacts/{id}/companies``.
- page, screen, alias: skipped (Intercom's REST API has no such calls).

A track or group for a contact Intercom does not know yet is retried while the
event is younger than ``contact_grace_seconds`` (its identify may be in another
batch still in flight), then dead-lettered saying so. Events of one user are
sent in order, one at a time; different users go concurrently, a few at once.
When an event of a user must be retried, that user's later events in the batch
wait with it, except after one waiting for its contact: the user's later events
go on (an identify among them makes the contact), then it is tried once more.
Mapping is in ``mapping.py``, the HTTP details in ``api.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from eventd import (
    HTTP_SETTINGS,
    OK,
    Event,
    HttpDestination,
    Outcome,
    Permanent,
    Retry,
    Skip,
    hookimpl,
)

from .api import IntercomApi, Reply, failure
from .mapping import company_body, contact_body, event_body

REGION_ENDPOINTS = {
    "us": "https://api.intercom.io",
    "eu": "https://api.eu.intercom.io",
    "au": "https://api.au.intercom.io",
}
# Users whose events are sent at the same time within one deliver() call: Intercom
# has no batch API, and its rate limit is per workspace, so stay modest.
CONCURRENCY = 4
# "A contact matching those details already exists with id=5da6f18e3d7cf967e4582d05"
_EXISTING_ID = re.compile(r"\bid=([0-9A-Za-z_-]+)")


class _NotYet(Exception):
    """The contact this event needs is not in Intercom (yet)."""


class _WaitingForContact(Retry):
    """Retry a track or group whose contact Intercom does not know yet."""


class Intercom(HttpDestination):
    type_name = "intercom"
    integration_name = "Intercom"
    description = "Intercom: identify -> contacts, track -> data events, group -> companies"
    regions = REGION_ENDPOINTS
    # One request (or two, three) per event: a batch is a unit of work, not a request.
    max_batch_events = 50
    settings_schema = {
        "type": "object",
        "required": ["access_token"],
        "additionalProperties": False,
        "properties": {
            "access_token": {
                "type": "string",
                "minLength": 1,
                "description": "an Intercom access token (sent as a Bearer token)",
            },
            "api_version": {
                "type": "string",
                "pattern": r"^(\d+\.\d+|Unstable)$",
                "default": "2.11",
                "description": "the Intercom-Version header",
            },
            "region": {
                "enum": sorted(REGION_ENDPOINTS),
                "default": "us",
                "description": "workspace data hosting region: us, eu or au",
            },
            "contact_grace_seconds": {
                "type": "number",
                "minimum": 0,
                "default": 60,
                "description": "how long a track or group for a contact Intercom does not"
                " know yet is retried (its identify may still be on its way)",
            },
            **HTTP_SETTINGS,
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        token = str(self.settings["access_token"])
        self.api = IntercomApi(self.send, self.endpoint, token, self.settings["api_version"])
        self.grace_ms = float(self.settings["contact_grace_seconds"]) * 1000

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [OK] * len(batch)
        lanes: dict[str, list[int]] = {}
        for i, event in enumerate(batch):
            m = event.message
            lanes.setdefault(str(m.get("userId") or m.get("anonymousId") or ""), []).append(i)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def lane(indices: list[int]) -> None:
            held: Retry | None = None
            unknown: list[int] = []  # events waiting for a contact a later identify may make
            async with slots:
                for i in indices:
                    # Keep one user's events in order: after a retry, the rest wait too...
                    outcome = held or await self._one(batch[i])
                    outcomes[i] = outcome
                    if isinstance(outcome, _WaitingForContact):
                        # ...except one for a contact not made yet: a later identify of the
                        # batch may make it, so it must not wait behind this event.
                        unknown.append(i)
                    elif isinstance(outcome, Retry):
                        held = outcome
                for i in unknown:  # once more, after the lane's identifies
                    outcomes[i] = held or await self._one(batch[i])

        await asyncio.gather(*(lane(ix) for ix in lanes.values()))
        return outcomes

    async def _one(self, event: Event) -> Outcome:
        kind = event.message.get("type")
        try:
            if kind == "identify":
                return await self._identify(event.message)
            if kind == "track":
                return await self._track(event.message)
            if kind == "group":
                return await self._group(event.message)
        except _NotYet as exc:
            if time.time() * 1000 - event.received_at < self.grace_ms:
                return _WaitingForContact(f"{exc}; waiting for its identify")
            return Permanent(f"{exc}: identify the user first, then redrive")
        return Skip(f"{kind} calls are not supported by Intercom")

    # -- the three calls ------------------------------------------------------------------

    async def _identify(self, message: Mapping[str, Any]) -> Outcome:
        body = contact_body(message)
        if isinstance(body, Skip):
            return body
        reply = await self.api.call("POST", "/contacts", body)
        if isinstance(reply, Retry) or reply.ok:
            return reply if isinstance(reply, Retry) else OK
        if reply.status != 409:
            return failure(reply, "creating a contact")
        found = _existing_id(reply)
        if found is None:
            searched = await self._find_contact(body)
            if not isinstance(searched, str):
                # Intercom says it exists; its search index has not caught up yet.
                return searched or Retry("Intercom says the contact exists but cannot find it yet")
            found = searched
        reply = await self.api.call("PUT", f"/contacts/{found}", body)
        if isinstance(reply, Retry):
            return reply
        return OK if reply.ok else failure(reply, "updating a contact")

    async def _track(self, message: Mapping[str, Any]) -> Outcome:
        body = event_body(message)
        if isinstance(body, Skip):
            return body
        reply = await self.api.call("POST", "/events", body)
        if isinstance(reply, Retry):
            return reply
        if reply.ok:
            return OK
        if reply.status == 404:
            who = f"user_id={body['user_id']}" if "user_id" in body else "that email"
            raise _NotYet(f"Intercom has no contact with {who} ({reply.errors()})")
        return failure(reply, "submitting an event")

    async def _group(self, message: Mapping[str, Any]) -> Outcome:
        if not message.get("groupId"):
            return Permanent("a group call without a groupId")
        reply = await self.api.call("POST", "/companies", company_body(message))
        if isinstance(reply, Retry):
            return reply
        company = reply.data.get("id") if reply.ok and isinstance(reply.data, Mapping) else None
        if not reply.ok:
            return failure(reply, "creating or updating a company")
        user_id = message.get("userId")
        if not user_id or not company:
            return OK  # no contact to attach: the company alone is what the call gave
        contact = await self._find_contact({"external_id": str(user_id)})
        if contact is None:
            raise _NotYet(f"Intercom has no contact with external_id={user_id} to attach")
        if not isinstance(contact, str):
            return contact
        reply = await self.api.call("POST", f"/contacts/{contact}/companies", {"id": company})
        if isinstance(reply, Retry):
            return reply
        return OK if reply.ok else failure(reply, "attaching a contact to a company")

    # -- contacts -------------------------------------------------------------------------

    async def _find_contact(self, body: Mapping[str, Any]) -> str | Outcome | None:
        """The id of the one contact with this external_id (else email); None if none."""
        field = "external_id" if body.get("external_id") else "email"
        query = {"query": {"field": field, "operator": "=", "value": body.get(field)}}
        reply = await self.api.call("POST", "/contacts/search", query)
        if isinstance(reply, Retry):
            return reply
        if not reply.ok:
            return failure(reply, "searching contacts")
        data = reply.data.get("data") if isinstance(reply.data, Mapping) else None
        matches = [c["id"] for c in data or [] if isinstance(c, Mapping) and "id" in c]
        if len(matches) > 1:
            return Permanent(f"{len(matches)} Intercom contacts have that {field}; expected one")
        return str(matches[0]) if matches else None


def _existing_id(reply: Reply) -> str | None:
    found = _EXISTING_ID.search(reply.errors())
    return found.group(1) if found else None


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [Intercom]
