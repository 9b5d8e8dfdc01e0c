"""The console in headless Chromium, against a real ``eventd serve`` and a real webhook server.

One story, one browser session (tests/console_driver.py):

1. ``/console`` sends the browser to the sign-in page; signing in with the admin token
   lands on the overview, which lists the configured destinations and sources;
2. the live page is open when the Python SDK (segment-analytics-python) sends tracks
   whose properties and event name are XSS payloads: each appears as a row, its JSON
   shows the payloads as text, no element was made from them and no script ran; the
   detail says which destinations delivered it, skipped it (a type filter) or did not
   get it (another source); a rejected request appears with its reason;
3. an event the webhook refuses with a 400 (permanent) is on the dead-letters page with
   its error; after the webhook recovers, "Redrive" and the confirmation deliver it:
   the webhook receives exactly that messageId and the dead letter is gone; another
   is purged (a cancelled confirmation first deletes nothing) and never delivered;
4. the browser saw no console error, no failed request, no request to another origin.

Screenshots (overview, live, dead letters; 1280 and 390 px wide) go to a temporary
directory, or to docs/console/ with ``EVENTD_CONSOLE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_driver import Page, browser_or_skip, screenshot_dir
from tests.harness import EventdProcess, Received, Sink, running

XSS_IMG = "<img src=x onerror=window.__xss=1>"
XSS_SCRIPT = "</script><script>window.__xss=2</script>"
XSS_EVENT = '<svg onload="window.__xss=3">Signed Up'


class Webhook:
    """A webhook that answers 400 (a permanent error) to events marked ``bounce`` until
    ``recover()``; counts what it accepted by messageId."""

    def __init__(self) -> None:
        self.recovered = threading.Event()
        self.sink = Sink(handler=self.answer)

    def answer(self, r: Received) -> int:
        events = r.json()
        events = events if isinstance(events, list) else [events]
        bounce = any(e.get("properties", {}).get("bounce") for e in events)
        return 400 if bounce and not self.recovered.is_set() else 200


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    with running(hook.sink):
        yield hook


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshot_dir(tmp_path)


def _client(ev: EventdProcess) -> Any:
    from segment.analytics import Client

    errors: list[Any] = []
    client = Client(
        ev.write_key, host=ev.url, on_error=lambda e, b: errors.append(e), sync_mode=True
    )
    client.errors = errors
    return client


def test_console_in_chromium(
    eventd: Callable[..., EventdProcess], webhook: Webhook, shots: Path, tmp_path: Path
) -> None:
    chromium = browser_or_skip()
    ev = eventd(
        {
            "sources": {"ios": {"write_key": "wk_ios_" + os.urandom(4).hex()}},
            "destinations": {
                "hook": {"type": "webhook", "settings": {"url": webhook.sink.url + "/hook"}},
                "archive": {"type": "jsonl", "settings": {"path": str(tmp_path / "a.jsonl")}},
                "identify_only": {
                    "type": "jsonl",
                    "types": ["identify"],
                    "settings": {"path": str(tmp_path / "i.jsonl")},
                },
                "ios_copy": {
                    "type": "jsonl",
                    "sources": ["ios"],
                    "settings": {"path": str(tmp_path / "ios.jsonl")},
                },
            },
        }
    )
    sdk = _client(ev)
    with Page(chromium, ev.url) as page:
        # 1. sign-in, overview
        assert page.goto("/console/live") == ev.url + "/console/login"
        page.sign_in(ev.admin_token)
        cookie = next(c for c in page.do("cookies") if c["name"] == "eventd_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        page.wait("#destinations tbody tr[data-destination='ios_copy']")
        names = page.texts("#destinations tbody tr td:first-child")
        assert sorted(names) == ["archive", "hook", "identify_only", "ios_copy"]
        types = page.texts("#destinations tbody tr td:nth-child(2)")
        assert sorted(types) == ["jsonl", "jsonl", "jsonl", "webhook"]
        page.wait("#sources tbody tr[data-source='ios']")
        assert sorted(page.texts("#sources tbody tr td:first-child")) == ["app", "ios"]
        assert ev.admin_token not in page.do("evaluate", expr="document.documentElement.outerHTML")

        # 2. live: hostile payloads, shown as text; outcomes per destination
        page.goto("/console/live")
        page.wait("#live-state", text="Live")
        sdk.track("user-1", XSS_EVENT, {"html": XSS_IMG, "script": XSS_SCRIPT}, message_id="m-xss")
        sdk.track("user-2", "Checkout", {"plan": "pro"}, message_id="m-plain")
        sdk.flush()
        assert sdk.errors == []
        page.wait("#live tbody tr[data-message-id='m-xss']")
        page.wait("#live tbody tr[data-message-id='m-plain']")
        row = page.texts("#live tbody tr[data-message-id='m-xss'] td")
        assert row[1:6] == ["app", "track", XSS_EVENT, "user-1", "accepted"]
        status, body = ev.post("/v1/track", {"userId": "u", "properties": {}}, key=ev.write_key)
        assert status == 400, body  # a track without an event name: rejected
        page.wait("#live tbody tr td.rejected")
        rejected = page.texts("#live tbody tr td.rejected")
        assert len(rejected) == 1 and rejected[0].startswith("rejected: ")
        ev.drain()
        page.do("click", sel="#live tbody tr[data-message-id='m-xss']")
        page.wait("#outcomes tbody tr[data-destination='hook'][data-outcome='delivered']")
        outcomes = page.columns("#outcomes tbody tr")
        assert outcomes == {
            "archive": "delivered",
            "hook": "delivered",
            "identify_only": "skipped",
            "ios_copy": "not routed",
        }
        shown = json.loads(page.texts("#event-json")[0])
        assert shown["properties"] == {"html": XSS_IMG, "script": XSS_SCRIPT}
        assert shown["event"] == XSS_EVENT and shown["messageId"] == "m-xss"
        assert page.do("count", sel="#live img, #live svg, #detail img, #detail svg") == 0
        assert page.do("evaluate", expr="window.__xss === undefined") is True
        page.screenshots("live", shots)

        # 3. dead letters: a permanent error, then a redrive from the page
        sdk.track(
            "user-3", "Refund Requested", {"bounce": True, "note": XSS_IMG}, message_id="m-dead"
        )
        sdk.flush()
        ev.drain()
        dead = ev.admin("GET", "/admin/dead-letters")
        assert [(d["message_id"], d["destination"]) for d in dead] == [("m-dead", "hook")]
        page.goto("/console")
        page.wait("#destinations tr.bad[data-destination='hook']")
        page.screenshots("overview", shots)
        page.goto("/console/dead-letters")
        page.wait("#dead-letters tbody tr[data-message-id='m-dead']")
        page.do("click", sel="#dead-letters tbody tr[data-message-id='m-dead'] td:first-child")
        page.wait("#dl-error", text="400")
        letter = json.loads(page.texts("#detail #event-json")[0])
        assert letter["messageId"] == "m-dead" and letter["properties"]["note"] == XSS_IMG
        assert page.do("count", sel="#dead-letters img, #detail img") == 0
        page.screenshots("dead-letters", shots)

        webhook.recovered.set()
        page.do("click", sel="#dead-letters tbody tr[data-message-id='m-dead'] button.redrive")
        page.wait("#confirm", text="Redrive dead letter")
        page.do("click", sel="#confirm-ok")
        page.wait("#dl-state", text="Redriven: 1")
        webhook.sink.wait_for(lambda s: s.message_ids()["m-dead"] == 1)
        page.wait("#dead-letters tbody", text="No dead letters match.")
        assert ev.admin("GET", "/admin/dead-letters") == []

        # ... and a purge, after its confirmation (cancelled first: nothing deleted)
        webhook.recovered.clear()
        sdk.track("user-4", "Refund Requested", {"bounce": True}, message_id="m-purged")
        sdk.flush()
        ev.drain()
        page.goto("/console/dead-letters?destination=hook")
        page.wait("#dead-letters tbody tr[data-message-id='m-purged']")
        page.do("click", sel="#purge-all")
        page.wait("#confirm", text="of destination hook")
        page.do("click", sel="#confirm button[value=cancel]")
        assert [d["message_id"] for d in ev.admin("GET", "/admin/dead-letters")] == ["m-purged"]
        page.do("click", sel="#purge-all")
        page.do("click", sel="#confirm-ok")
        page.wait("#dl-state", text="Purged: 1")
        page.wait("#dead-letters tbody", text="No dead letters match.")
        assert ev.admin("GET", "/admin/dead-letters") == []
        ev.drain()
        received = webhook.sink.message_ids()
        assert received == {"m-xss": 1, "m-plain": 1, "m-dead": 1}

        # 4. nothing went wrong in the browser, nothing left the machine
        seen = page.do("report")
        assert seen["consoleErrors"] == [], seen
        assert seen["pageErrors"] == [] and seen["failed"] == [] and seen["foreign"] == [], seen
        assert page.do("evaluate", expr="window.__xss === undefined") is True
    assert ev.admin_token not in ev.log()
