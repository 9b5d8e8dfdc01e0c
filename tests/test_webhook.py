"""The webhook destination on its own: deliver() against a real aiohttp server on a free
loopback port, which records each request and answers as the test tells it."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eventd_plugins.webhook import Webhook

from eventd import OK, Event, Permanent, Retry
from eventd.config import ConfigError
from tests.harness import free_port

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

# Stored bodies as the outbox holds them; the odd key order shows they are sent as stored.
TRACK = (
    b'{"type":"track","event":"Signed Up","userId":"u-1","messageId":"m-1",'
    b'"properties":{"plan":"pro","seats":3}}'
)
PAGE = (
    b'{"type":"page","name":"Home","anonymousId":"a-1","messageId":"m-2",'
    b'"context":{"locale":"fr-FR","page":{"title":"Caf\xc3\xa9"}}}'
)
IDENTIFY = b'{"userId":"u-1","type":"identify","messageId":"m-3","traits":{"n":1}}'


def stored(*bodies: bytes) -> list[Event]:
    """Events as the dispatcher hands them over: read from the outbox, not yet parsed."""
    return [Event(seq, "app", 1_700_000_000_000, body=b) for seq, b in enumerate(bodies, 1)]


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers with ``answers`` in turn, then 200.

    An answer is a status, ``(status, headers)`` or ``"hang"`` (answer only when the
    test ends, i.e. after any client timeout)."""

    answers: list[Any] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await self.release.wait()
            answer = 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers, text=f"answer {status}")


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hooks/in"))
    yield r
    r.release.set()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def webhook(session: aiohttp.ClientSession, url: str, **settings: Any) -> Webhook:
    config = {"url": url, **settings}
    Webhook.validate_settings("hook", config)  # as eventd does at start
    return Webhook("hook", config, session)


# -- what is sent ---------------------------------------------------------------------------


async def test_one_event_per_request_is_the_stored_json_object(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hook = webhook(session, receiver.url)
    assert hook.max_batch_events == 1  # so the dispatcher hands over one event at a time
    assert await hook.deliver(stored(PAGE)) == OK
    [request] = receiver.seen
    assert (request.method, request.path_qs) == ("POST", "/hooks/in")
    assert request.body == PAGE
    assert json.loads(request.body)["context"]["page"]["title"] == "Café"
    assert request.headers["Content-Type"] == "application/json"


async def test_batch_mode_sends_a_json_array_of_the_stored_events(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hook = webhook(session, receiver.url, batch=True)
    assert hook.max_batch_events == 100
    assert await hook.deliver(stored(TRACK, PAGE, IDENTIFY)) == OK
    [request] = receiver.seen
    assert request.body == b"[" + TRACK + b"," + PAGE + b"," + IDENTIFY + b"]"
    assert json.loads(request.body) == [json.loads(b) for b in (TRACK, PAGE, IDENTIFY)]


async def test_a_batch_of_one_is_still_an_array(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    assert await webhook(session, receiver.url, batch=True).deliver(stored(TRACK)) == OK
    assert json.loads(receiver.seen[0].body) == [json.loads(TRACK)]


async def test_an_event_built_in_memory_is_sent_as_its_message(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": {"n": 1.5}}
    assert await webhook(session, receiver.url).deliver([Event(1, "app", 0, message, 0)]) == OK
    assert json.loads(receiver.seen[0].body) == message


async def test_custom_headers_are_sent_and_may_replace_the_content_type(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Bearer abc123", "X-Team": "growth"}
    await webhook(session, receiver.url, headers=headers).deliver(stored(TRACK))
    sent = receiver.seen[0].headers
    assert (sent["Authorization"], sent["X-Team"]) == ("Bearer abc123", "growth")
    assert "X-Signature" not in sent  # no shared_secret, no signature

    custom = {"Content-Type": "application/vnd.segment+json"}
    await webhook(session, receiver.url, headers=custom).deliver(stored(TRACK))
    assert receiver.seen[1].headers["Content-Type"] == "application/vnd.segment+json"


@pytest.mark.parametrize("batch", [False, True])
async def test_x_signature_is_the_hex_hmac_sha1_of_the_body(
    receiver: Receiver, session: aiohttp.ClientSession, batch: bool
) -> None:
    secret = "whsec_0123456789"
    hook = webhook(session, receiver.url, shared_secret=secret, batch=batch)
    await hook.deliver(stored(TRACK) if not batch else stored(TRACK, IDENTIFY))
    expected_body = TRACK if not batch else b"[" + TRACK + b"," + IDENTIFY + b"]"
    expected = hmac.new(secret.encode(), expected_body, hashlib.sha1).hexdigest()
    [request] = receiver.seen
    assert request.body == expected_body
    assert request.headers["X-Signature"] == expected


async def test_endpoint_replaces_scheme_and_host_and_keeps_path_and_query(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    base = receiver.url.removesuffix("/hooks/in")
    hook = webhook(session, "https://hooks.example.com/in/abc?tenant=7", endpoint=base)
    assert await hook.deliver(stored(TRACK)) == OK
    assert receiver.seen[0].path_qs == "/in/abc?tenant=7"


# -- what the answer means ------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_delivered(
    receiver: Receiver, session: aiohttp.ClientSession, status: int
) -> None:
    receiver.answers.append(status)
    assert await webhook(session, receiver.url).deliver(stored(TRACK)) == OK


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
async def test_other_4xx_is_permanent_with_the_status_and_body(
    receiver: Receiver, session: aiohttp.ClientSession, status: int
) -> None:
    receiver.answers.append(status)
    outcome = await webhook(session, receiver.url).deliver(stored(TRACK))
    assert outcome == Permanent(f"HTTP {status}: answer {status}")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_408_429_and_5xx_are_retried(
    receiver: Receiver, session: aiohttp.ClientSession, status: int
) -> None:
    receiver.answers.append(status)
    outcome = await webhook(session, receiver.url).deliver(stored(TRACK))
    assert outcome == Retry(f"HTTP {status}: answer {status}", None)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_the_retry_delay(
    receiver: Receiver, session: aiohttp.ClientSession, status: int
) -> None:
    receiver.answers.append((status, {"Retry-After": "17"}))
    outcome = await webhook(session, receiver.url).deliver(stored(TRACK))
    assert isinstance(outcome, Retry) and outcome.after == 17.0


async def test_retry_after_as_an_http_date(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    receiver.answers.append((429, {"Retry-After": when}))
    outcome = await webhook(session, receiver.url).deliver(stored(TRACK))
    assert isinstance(outcome, Retry) and outcome.after is not None
    assert 110 < outcome.after <= 120  # the date has whole seconds


async def test_no_answer_within_the_timeout_is_retried(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    receiver.answers.append("hang")
    hook = webhook(session, receiver.url, timeout=0.2)
    started = time.monotonic()
    outcome = await hook.deliver(stored(TRACK))
    assert outcome == Retry("no response within 0.2s")
    assert time.monotonic() - started < 5  # the hanging server did not hold it longer
    assert len(receiver.seen) == 1  # the request got there: the answer is what never came


async def test_a_refused_connection_is_retried(session: aiohttp.ClientSession) -> None:
    hook = webhook(session, f"http://127.0.0.1:{free_port()}/in")  # nothing listens there
    outcome = await hook.deliver(stored(TRACK))
    assert isinstance(outcome, Retry) and outcome.reason.startswith("network error: ")
    assert outcome.after is None


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "destinations.hook.settings: 'url' is a required property"),
        ({"url": "ftp://x/"}, "destinations.hook.settings.url = 'ftp://x/'"),
        ({"url": "http://x/", "timeout": 0}, "destinations.hook.settings.timeout = 0"),
        ({"url": "http://x/", "headers": {"X-N": 1}}, "destinations.hook.settings.headers.X-N"),
        ({"url": "http://x/", "shared_secret": ""}, "settings.shared_secret = ***"),
        ({"url": "http://x/", "batched": True}, "'batched' was unexpected"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        Webhook.validate_settings("hook", settings)
    assert expected in str(err.value)


def test_a_settings_error_shows_the_limit_even_when_it_equals_the_value() -> None:
    with pytest.raises(ConfigError) as exc:
        Webhook.validate_settings("w", {"url": "http://x", "timeout": 0})
    assert str(exc.value) == (
        "destinations.w.settings.timeout = 0: value is less than or equal to the minimum of 0"
    )


def test_a_password_inside_a_url_is_never_printed() -> None:
    with pytest.raises(ConfigError) as exc:
        Webhook.validate_settings("w", {"url": "ftp://ops:hunter2secret@hooks.example/x"})
    assert "hunter2secret" not in str(exc.value)
    assert str(exc.value).startswith(
        "destinations.w.settings.url = 'ftp://ops:***@hooks.example/x'"
    )
