"""RudderStack's browser SDK (@rudderstack/analytics-js 3.x) in headless Chromium into a
real eventd, which is both its data plane (``dataPlaneUrl``) and its ``configUrl``.

``tests/browser/rudder.mjs`` loads the npm package's bundled UMD build on a page of
another origin and, in each of three modes, makes the five calls the SDK has (page,
track, identify, group, alias):

- ``standard``: one XHR per call to ``/v1/<type>`` (Basic auth, CORS preflight asking
  for AnonymousId and SentAt);
- ``batching``: XHR batches to ``/v1/batch``;
- ``beacon``: ``navigator.sendBeacon`` to ``/beacon/v1/batch?writeKey=`` (text/plain,
  no Authorization), flushed as the page is left.

Before any of it the SDK fetches ``/sourceConfig/`` from eventd. Every event the
browser put on the wire is then compared, by messageId and field by field, with what
eventd stored. Needs chromium and tests/browser/node_modules (``.ci/browser-setup.sh``);
skipped without chromium, as tests/test_browser.py is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.harness import EventdProcess, free_port
from tests.test_browser import _run_browser, browser_ready  # noqa: F401 (the fixture)

BROWSER_DIR = Path(__file__).parent / "browser"
PACKAGE = BROWSER_DIR / "node_modules" / "@rudderstack" / "analytics-js"
MODES = ("standard", "batching", "beacon")
CALLS = ("page", "track", "identify", "group", "alias")


def test_rudderstack_browser_sdk_sends_to_eventd(
    browser_ready: str,  # noqa: F811
    eventd: Callable[..., EventdProcess],
) -> None:
    assert PACKAGE.exists(), f"{PACKAGE} is missing (run .ci/browser-setup.sh)"
    ev = eventd()
    plan = {
        "chromium": browser_ready,
        "pagePort": free_port(),
        "eventd": ev.url,
        "writeKey": ev.write_key,
        "scenarios": [{"name": mode, "mode": mode} for mode in MODES],
    }
    out = _run_browser(plan, ev, script="rudder.mjs")
    results = {r["name"]: r for r in out["scenarios"]}
    stored = {m["messageId"]: m for m in ev.stored()}
    version = json.loads((PACKAGE / "package.json").read_text())["version"]
    assert version.startswith("3."), version

    all_sent: set[str] = set()
    for mode in MODES:
        r = results[mode]
        assert "error" not in r, f"{mode}: {r.get('error')}\n{r['seen']}\n{ev.log()[-3000:]}"
        seen = r["seen"]
        assert seen["pageErrors"] == [] and seen["failed"] == [], (mode, seen)
        assert seen["consoleErrors"] == [], (mode, seen)
        foreign = [
            u
            for u in seen["requests"]
            if not u.split(" ", 1)[1].startswith(
                (ev.url + "/", f"http://127.0.0.1:{plan['pagePort']}/", "about:")
            )
        ]
        assert foreign == [], f"{mode}: requests left eventd and the page: {foreign}"
        # The SDK asked eventd for its source configuration first.
        assert any(f"GET {ev.url}/sourceConfig/?" in u for u in seen["requests"]), seen
        # How each mode reaches eventd, all answered 200.
        paths = {(s["path"].split("?")[0], s["status"]) for s in r["sent"]}
        if mode == "standard":
            assert paths == {(f"/v1/{c}", 200) for c in CALLS}, r["sent"]
        elif mode == "batching":
            assert paths == {("/v1/batch", 200)}, r["sent"]
        else:
            assert paths == {("/beacon/v1/batch", 200)}, r["sent"]
            assert all(s["path"].endswith(f"?writeKey={ev.write_key}") for s in r["sent"])
        if mode != "beacon":
            # Headers no simple request may carry: Chromium sent these POSTs only
            # because eventd's preflight allowed them (Playwright does not show the
            # preflight itself).
            for s in r["sent"]:
                assert {"anonymousid", "sentat", "authorization"} <= set(s["headers"]), s
        events = [e for s in r["sent"] for e in s["events"]]
        by_type = {e["type"]: e for e in events}
        assert sorted(by_type) == sorted(CALLS) and len(events) == len(CALLS), events

        for kind, sent in by_type.items():
            m = stored[sent["messageId"]]
            all_sent.add(sent["messageId"])
            # Every field the SDK sent arrives (timestamps are eventd's to set).
            for key, value in sent.items():
                if key in ("sentAt", "originalTimestamp", "timestamp", "context", "channel"):
                    continue
                if value in ("", None):  # an empty id or field is absent in eventd
                    assert m.get(key) in (None, ""), (mode, kind, key, m.get(key))
                else:
                    assert m.get(key) == value, (mode, kind, key, m.get(key), value)
            assert m["originalTimestamp"] == sent["originalTimestamp"], (mode, kind)
            ctx = m["context"]
            assert ctx["library"]["name"] == "RudderLabs JavaScript SDK", ctx["library"]
            assert ctx["library"]["version"] == version, ctx["library"]
            assert ctx["userAgent"] == sent["context"]["userAgent"]
            assert ctx["page"]["url"].startswith(f"http://127.0.0.1:{plan['pagePort']}/"), ctx
            assert ctx["ip"] == "127.0.0.1"
            assert m["anonymousId"] == r["anonymousId"], (mode, kind, m)
        user = f"user-{mode}"
        assert by_type["page"]["name"] == "Rudder test"
        assert stored[by_type["page"]["messageId"]]["category"] == "Docs"
        assert stored[by_type["track"]["messageId"]]["event"] == "Rudder Test Ran"
        assert stored[by_type["track"]["messageId"]]["properties"] == {
            "scenario": mode,
            "n": 1,
            "big": 2**53 - 1,  # Number.MAX_SAFE_INTEGER
        }
        identify = stored[by_type["identify"]["messageId"]]
        assert identify["userId"] == user
        assert identify["context"]["traits"]["email"] == f"{mode}@example.com"
        assert stored[by_type["group"]["messageId"]]["groupId"] == f"acct-{mode}"
        alias = stored[by_type["alias"]["messageId"]]
        assert (alias["userId"], alias["previousId"]) == (f"alias-{mode}", user)
    # Exactly what the browsers sent, nothing else.
    assert set(stored) == all_sent and len(all_sent) == len(MODES) * len(CALLS)
    assert len({results[m]["anonymousId"] for m in MODES}) == len(MODES)
    assert "Traceback" not in ev.log()
