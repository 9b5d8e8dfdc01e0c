"""What HTTP destinations share: :class:`HttpDestination` (``endpoint`` and ``timeout``
settings, regional base URLs, one way to send), the reading of an answer
(:func:`classify`, with a destination's own 401/403 reason and 413 halving),
:func:`deliver_halving`, ``Retry-After``, and the one :func:`scrub` that keeps
secrets out of outcome reasons (the words that mark a secret live in
``eventd/redact.py``, shared with the log processor).

The usual contract, which :func:`classify` applies::

    2xx ................ Ok
    408, 429, 5xx ...... Retry (Retry-After honoured)
    401, 403 ........... Permanent: the destination's ``refused`` reason (credentials)
    413 ................ TOO_LARGE with ``halve``: deliver_halving splits the batch
    other 4xx .......... Permanent
    network, timeout ... Retry (from :meth:`HttpDestination.send`)
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, overload

import aiohttp
import orjson

from eventd.destination import OK, Destination, Outcome, Permanent, Retry, Skip
from eventd.event import Event
from eventd.redact import SECRET_WORDS, is_secret, redact

__all__ = [
    "HTTP_SETTINGS",
    "SECRET_WORDS",
    "TOO_LARGE",
    "HttpDestination",
    "Response",
    "classify",
    "deliver_halving",
    "json_body",
    "redact",
    "retry_after",
    "scrub",
]

HTTP_SETTINGS: dict[str, Any] = {
    "endpoint": {
        "type": "string",
        "pattern": "^https?://",
        "description": "Base URL of the API (tests, proxies, regional hosts)",
    },
    "timeout": {
        "type": "number",
        "exclusiveMinimum": 0,
        "default": 10,
        "description": "Seconds to wait for a response",
    },
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def text(self, limit: int = 500) -> str:
        return self.body[:limit].decode("utf-8", "replace")


def json_body(body: bytes) -> dict[str, Any]:
    """A response body as a JSON object; anything else (HTML from a proxy...) as {}."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class HttpDestination(Destination):
    """A destination that talks HTTP: ``endpoint`` and ``timeout`` settings, one way to send.

    ``regions`` maps the ``region`` setting's values to base URLs (data residency);
    without it, ``default_endpoint`` is the base URL. The ``endpoint`` setting wins
    over both (tests, proxies)."""

    default_endpoint: ClassVar[str] = ""
    regions: ClassVar[Mapping[str, str]] = {}

    @property
    def endpoint(self) -> str:
        explicit = self.settings.get("endpoint")
        if explicit:
            return str(explicit).rstrip("/")
        if self.regions:
            return self.regions[self.settings["region"]].rstrip("/")
        return self.default_endpoint.rstrip("/")

    @property
    def secret_values(self) -> list[str]:
        """The values of this destination's secret settings (known by their names)."""
        return [str(v) for k, v in self.settings.items() if is_secret(k) and v]

    @overload
    def scrub(self, outcome: Outcome) -> Outcome: ...
    @overload
    def scrub(
        self, outcome: Sequence[Outcome] | Outcome | None
    ) -> Sequence[Outcome] | Outcome | None: ...
    def scrub(
        self, outcome: Sequence[Outcome] | Outcome | None
    ) -> Sequence[Outcome] | Outcome | None:
        """``outcome`` with this destination's secrets out of its reasons."""
        return scrub(outcome, self.secret_values)

    async def send(self, method: str, url: str, **kwargs: Any) -> Response | Retry:
        """Make one request; a network error or timeout is a Retry, anything else a Response."""
        timeout = aiohttp.ClientTimeout(total=float(self.settings.get("timeout", 10)))
        try:
            async with self.session.request(method, url, timeout=timeout, **kwargs) as resp:
                body = await resp.read()
                return Response(resp.status, resp.headers, body)
        except TimeoutError:
            return Retry(f"no response within {timeout.total:g}s")
        except aiohttp.ClientError as exc:
            return Retry(f"network error: {type(exc).__name__}: {exc}"[:300])
        except asyncio.CancelledError:
            raise


TOO_LARGE = None


async def deliver_halving(
    batch: Sequence[Event],
    send: Callable[[Sequence[Event]], Awaitable[Sequence[Outcome] | Outcome | None]],
) -> list[Outcome]:
    """Send ``batch`` with ``send``; when it answers ``TOO_LARGE`` (None, e.g. HTTP 413),
    send each half the same way. One event that is still too large is permanent."""
    result = await send(batch)
    if result is TOO_LARGE:
        if len(batch) == 1:
            return [Permanent("the API refused the event as too large (413)")]
        mid = len(batch) // 2
        return [
            *await deliver_halving(batch[:mid], send),
            *await deliver_halving(batch[mid:], send),
        ]
    if isinstance(result, Sequence):
        return list(result)
    return [result] * len(batch)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds or as an HTTP date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@overload
def scrub(outcome: Outcome, secrets: Iterable[str]) -> Outcome: ...
@overload
def scrub(
    outcome: Sequence[Outcome] | Outcome | None, secrets: Iterable[str]
) -> Sequence[Outcome] | Outcome | None: ...
def scrub(
    outcome: Sequence[Outcome] | Outcome | None, secrets: Iterable[str]
) -> Sequence[Outcome] | Outcome | None:
    """The same outcome(s) with every secret (as it is or URL-encoded) out of the reasons:
    reasons end up in dead letters, logs and the admin API."""
    secrets = list(secrets)

    def one(o: Outcome) -> Outcome:
        if isinstance(o, Permanent):
            return Permanent(redact(o.reason, secrets))
        if isinstance(o, Retry):
            return Retry(redact(o.reason, secrets), o.after)
        if isinstance(o, Skip):
            return Skip(redact(o.reason, secrets))
        return o

    if outcome is None:
        return None
    return [one(o) for o in outcome] if isinstance(outcome, Sequence) else one(outcome)


@overload
def classify(
    resp: Response,
    *,
    refused: Callable[[Response], Outcome] | None = None,
    halve: Literal[False] = False,
) -> Outcome: ...


@overload
def classify(
    resp: Response,
    *,
    refused: Callable[[Response], Outcome] | None = None,
    halve: bool,
) -> Outcome | None: ...


def classify(
    resp: Response,
    *,
    refused: Callable[[Response], Outcome] | None = None,
    halve: bool = False,
) -> Outcome | None:
    """The usual HTTP contract: 2xx ok; 408, 429 and 5xx retry; other 4xx permanent.

    ``refused`` gives a 401 or 403 the destination's own reason (which settings to
    check); ``halve`` makes a 413 TOO_LARGE, for :func:`deliver_halving`."""
    if 200 <= resp.status < 300:
        return OK
    if refused is not None and resp.status in (401, 403):
        return refused(resp)
    if halve and resp.status == 413:
        return TOO_LARGE
    reason = f"HTTP {resp.status}: {resp.text(300)}"
    if resp.status in (408, 429) or resp.status >= 500:
        return Retry(reason, retry_after(resp.headers))
    return Permanent(reason)
