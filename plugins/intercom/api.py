"""Talking to Intercom's REST API: one request, its error body, and the rate limit it reports.

Owns what every Intercom call shares: the Bearer token and ``Intercom-Version``
headers, reading ``{"type": "error.list", "errors": [{code, message}]}`` into a
reason, and the ``X-RateLimit-*`` headers. Intercom counts requests per app in
short windows; when the last answers say none are left (``X-RateLimit-Remaining``
less the requests still in flight), further calls return ``Retry(after=reset)``
without being sent, and a 429 is a ``Retry`` after ``X-RateLimit-Reset`` (epoch
seconds). The waiting itself is the dispatcher's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from eventd import Permanent, Response, Retry, json_dumps, retry_after

Send = Callable[..., Awaitable[Response | Retry]]


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer from Intercom other than a 429 (that one is a Retry)."""

    status: int
    data: Any  # the parsed JSON body, or None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def errors(self) -> str:
        """``code: message`` of each entry of an ``error.list`` body."""
        entries = self.data.get("errors") if isinstance(self.data, Mapping) else None
        if not isinstance(entries, list) or not entries:
            return "no error details"
        shown = [e for e in entries if isinstance(e, Mapping)]
        return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in shown)


class IntercomApi:
    """Requests to one Intercom workspace; shared by every delivery of one destination."""

    def __init__(self, send: Send, base: str, access_token: str, api_version: str) -> None:
        self._send = send
        self.base = base
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Intercom-Version": api_version,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        # The rate limit window as the last answers described it.
        self._remaining: int | None = None  # X-RateLimit-Remaining
        self._reset = 0.0  # X-RateLimit-Reset, epoch seconds: the window's end
        self._in_flight = 0

    async def call(self, method: str, path: str, body: Any = None) -> Reply | Retry:
        now = time.time()
        # Requests already sent will use up some of what is left: count them, so that
        # concurrent deliveries do not all spend the same last request.
        if now < self._reset and (self._remaining or 0) - self._in_flight <= 0:
            return Retry(
                "Intercom's rate limit window is spent (X-RateLimit-Remaining)", self._reset - now
            )
        data = json_dumps(body) if body is not None else None
        self._in_flight += 1
        try:
            resp = await self._send(method, self.base + path, data=data, headers=self._headers)
        finally:
            self._in_flight -= 1
        if isinstance(resp, Retry):
            return resp
        remaining = 0 if resp.status == 429 else _number(resp.headers, "X-RateLimit-Remaining")
        reset = _number(resp.headers, "X-RateLimit-Reset")
        if remaining is not None and reset is not None:
            self._note_window(int(remaining), reset)
        try:
            parsed = orjson.loads(resp.body) if resp.body.strip() else None
        except orjson.JSONDecodeError:
            parsed = None
        reply = Reply(resp.status, parsed)
        if resp.status == 429:
            after = retry_after(resp.headers) if reset is None else max(0.0, reset - time.time())
            return Retry(f"Intercom rate limit (429 {reply.errors()})", after)
        return reply

    def _note_window(self, remaining: int, reset: float) -> None:
        if reset > self._reset:  # a newer window
            self._reset, self._remaining = reset, remaining
        elif reset == self._reset:  # answers arrive out of order: the least left is latest
            self._remaining = min(
                self._remaining if self._remaining is not None else remaining, remaining
            )


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def failure(reply: Reply, doing: str) -> Retry | Permanent:
    """The outcome of a call that did not succeed, with a reason a person can act on."""
    details = reply.errors()
    if reply.status == 401:
        return Permanent(f"Intercom rejected the access token while {doing} (401 {details})")
    if reply.status == 403:
        return Permanent(
            f"Intercom refused {doing} (403 {details}): the access token lacks the permission"
        )
    reason = f"Intercom answered {reply.status} while {doing}: {details}"
    if reply.status == 408 or reply.status >= 500:
        return Retry(reason)
    return Permanent(reason)
