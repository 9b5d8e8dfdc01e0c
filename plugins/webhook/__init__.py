"""The ``webhook`` destination: Segment-style POSTs of stored events to any URL.

One event per request (or a JSON array of them with ``batch = true``), custom
headers, and an optional ``X-Signature``: hex HMAC-SHA1 of the body with
``shared_secret``. 2xx is delivered; 408, 429, 5xx and network errors are
retried (Retry-After honoured); any other 4xx is permanent.

With ``forward_deletions = true``, an erasure (``eventd suppressions add USER
--erase``) is POSTed too, one message per userId of the person (an array of them
with ``batch = true``), signed the same way, answered the same way::

    {"type": "delete", "userId": "u1", "anonymousIds": ["a1"],
     "messageId": "delete-<sha256 of the ids>", "timestamp": "<ISO-8601>"}
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp

from eventd import (
    HTTP_SETTINGS,
    OK,
    DeletionOutcome,
    Erasure,
    Event,
    HttpDestination,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Unsupported,
    classify,
    hookimpl,
    json_dumps,
)


class Webhook(HttpDestination):
    type_name = "webhook"
    integration_name = "Webhooks"
    description = "POST each event (or a batch) as JSON to a URL"
    settings_schema = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "pattern": "^https?://", "description": "where to POST"},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "extra request headers",
            },
            "shared_secret": {
                "type": "string",
                "minLength": 1,
                "description": "sign the body: X-Signature = hex HMAC-SHA1",
            },
            "batch": {
                "type": "boolean",
                "default": False,
                "description": "POST a JSON array of events per request",
            },
            "forward_deletions": {
                "type": "boolean",
                "default": False,
                "description": 'POST {"type": "delete", "userId": ...} when a user is erased',
            },
            **HTTP_SETTINGS,
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        url = urllib.parse.urlsplit(self.settings["url"])
        if self.settings.get("endpoint"):
            # endpoint replaces the URL's scheme and host, keeping its path (tests, proxies)
            base = urllib.parse.urlsplit(self.settings["endpoint"])
            url = url._replace(scheme=base.scheme, netloc=base.netloc)
        self.url = urllib.parse.urlunsplit(url)
        self.batch = bool(self.settings["batch"])
        if not self.batch:
            self.max_batch_events = 1
        self.headers = {"Content-Type": "application/json", **self.settings.get("headers", {})}
        secret = self.settings.get("shared_secret")
        self.secret = secret.encode() if secret else None

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        # The stored JSON as it is: a webhook gets what was stored, without a re-encode.
        body = b"[" + b",".join(e.body for e in batch) + b"]" if self.batch else batch[0].body
        return await self._post(body)

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        if not self.settings["forward_deletions"]:
            return Unsupported(
                f"forward_deletions is off: ask the receiver of {self.url} to delete the user "
                f"by hand, or set destinations.{self.name}.settings.forward_deletions = true "
                "and erase again"
            )
        ids = ",".join([*erasure.user_ids, "|", *erasure.anonymous_ids])
        message_id = "delete-" + hashlib.sha256(ids.encode()).hexdigest()[:32]
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        messages = [
            {
                "type": "delete",
                "userId": user_id,
                "anonymousIds": list(erasure.anonymous_ids),
                # the same on every retry, so a receiver can drop a repeat
                "messageId": f"{message_id}-{i}",
                "timestamp": now,
            }
            for i, user_id in enumerate(erasure.user_ids)
        ]
        if self.batch:
            return await self._post(json_dumps(messages))
        for message in messages:
            outcome = await self._post(json_dumps(message))
            if not isinstance(outcome, Ok):
                return outcome
        return OK

    async def _post(self, body: bytes) -> Ok | Retry | Permanent:
        headers = dict(self.headers)
        if self.secret is not None:
            headers["X-Signature"] = hmac.new(self.secret, body, hashlib.sha1).hexdigest()
        resp = await self.send("POST", self.url, data=body, headers=headers)
        return resp if isinstance(resp, Retry) else classify(resp)


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [Webhook]
