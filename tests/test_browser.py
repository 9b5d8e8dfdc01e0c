"""analytics.js (@segment/analytics-next) in headless Chromium into a real eventd.

``tests/browser/run.mjs`` drives Debian's chromium with playwright-core; pages
are served on their own port, so every request to eventd is cross-origin. Five
scenarios, one browser context (so one anonymousId) each:

- ``standard`` and ``batching``: the npm package's UMD build,
  ``AnalyticsBrowser.load({writeKey, cdnURL: eventd})``, calling page, identify,
  track, group and alias (in batching mode all five go in one ``/v1/b``);
- ``snippet``: Segment's snippet with only its host changed, loading
  analytics.min.js from eventd itself (``server.analytics_js``), into a source
  whose ``allowed_origins`` lists the page's origin;
- ``refused-source``: a source whose ``allowed_origins`` excludes the page: the
  POST is answered 403 and the library drops the event;
- ``refused-preflight``: an eventd where no source allows the page's origin:
  the CORS preflight is refused, so the browser never sends the event.

Then eventd's store is compared with what the browser says it sent, by
messageId. Needs chromium and ``tests/browser/node_modules`` (both set up by
``.ci/browser-setup.sh``). Without chromium the test is skipped, saying so;
without the npm packages too, except in CI (``CI=true``) or with
``EVENTD_REQUIRE_BROWSER=1``, where that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EventdProcess, free_port

BROWSER_DIR = Path(__file__).parent / "browser"
PACKAGE = BROWSER_DIR / "node_modules" / "@segment" / "analytics-next"
STANDALONE = PACKAGE / "dist" / "umd" / "standalone.js"
FIVE = ("page", "alias", "identify", "track", "group")  # the order run.mjs calls them


def _missing() -> tuple[str, bool] | None:
    """Why the test cannot run, and whether that is excusable (chromium is missing)."""
    if not shutil.which("chromium"):
        return "chromium is not installed (.ci/browser-setup.sh installs it with apt)", True
    if not shutil.which("node"):
        return "node is not installed", False
    for need in (STANDALONE, BROWSER_DIR / "node_modules" / "playwright-core"):
        if not need.exists():
            return f"{need} is missing (run .ci/browser-setup.sh: npm ci in tests/browser)", False
    return None


@pytest.fixture
def browser_ready() -> str:
    """chromium's path; skips, printing why, when the browser cannot run here.

    Only a missing chromium is a skip in CI: there the npm packages are
    installed by .ci/browser-setup.sh, so their absence is a failure.
    """
    missing = _missing()
    if missing:
        reason, excusable = missing
        strict = os.environ.get("CI") == "true" or os.environ.get("EVENTD_REQUIRE_BROWSER") == "1"
        if strict and not excusable:
            pytest.fail(f"browser test cannot run: {reason}")
        print(f"\ntest_browser skipped: {reason}")
        pytest.skip(reason)
    chromium = shutil.which("chromium")
    assert chromium is not None
    return chromium


def _run_browser(
    plan: dict[str, Any], *servers: EventdProcess, script: str = "run.mjs"
) -> dict[str, Any]:
    """``node <script> '<plan>'`` in tests/browser; its stdout, parsed."""
    proc = subprocess.run(
        ["node", script, json.dumps(plan)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=110,
    )
    logs = "\n".join(f"--- eventd {s.url} ---\n{s.log()[-4000:]}" for s in servers)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr}\n{logs}"
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _stored_by_source(ev: EventdProcess) -> dict[str, list[dict[str, Any]]]:
    by_source: dict[str, list[dict[str, Any]]] = {}
    for source, body in ev.query("SELECT source, body FROM events ORDER BY seq"):
        by_source.setdefault(source, []).append(json.loads(body))
    return by_source


def test_analytics_js_in_chromium_sends_to_eventd(
    browser_ready: str, eventd: Callable[..., EventdProcess]
) -> None:
    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    suffix = os.urandom(4).hex()
    site_key, shop_key, closed_key = (f"wk_{n}_{suffix}" for n in ("site", "shop", "closed"))
    url_anonymous_id = f"anon-from-url-{suffix}"
    ev = eventd(
        {
            "server": {"analytics_js": str(STANDALONE)},
            "sources": {
                "site": {"write_key": site_key, "allowed_origins": [page_origin]},
                "shop": {"write_key": shop_key, "allowed_origins": ["https://shop.example"]},
            },
        }
    )
    closed = eventd(
        {
            "sources": {
                "app": {"write_key": closed_key, "allowed_origins": ["https://shop.example"]}
            }
        },
        subdir="closed",
    )
    plan = {
        "chromium": browser_ready,
        "pagePort": page_port,
        "scenarios": [
            {"name": "standard", "flavour": "npm", "eventd": ev.url, "writeKey": ev.write_key},
            {
                "name": "batching",
                "flavour": "npm",
                "eventd": ev.url,
                "writeKey": ev.write_key,
                "delivery": "batching",
            },
            {
                "name": "snippet",
                "flavour": "snippet",
                "eventd": ev.url,
                "writeKey": site_key,
                "ajsAid": url_anonymous_id,
            },
            {
                "name": "refused-source",
                "flavour": "npm",
                "eventd": ev.url,
                "writeKey": shop_key,
                "expect": "refused",
            },
            {
                "name": "refused-preflight",
                "flavour": "npm",
                "eventd": closed.url,
                "writeKey": closed_key,
                "expect": "refused",
            },
        ],
    }
    out = _run_browser(plan, ev, closed)
    results = {r["name"]: r for r in out["scenarios"]}
    stored = _stored_by_source(ev)
    print("\nstored events (source, then the fields checked below):")
    for source, compact in _compact(stored).items():
        for line in compact:
            print(json.dumps({"source": source, **line}))

    for r in results.values():
        assert "error" not in r, f"{r['name']}: {r['error']}\n{r['seen']}"
        hosts = {page_origin, ev.url, closed.url}
        urls = [line.split(" ", 1)[1] for line in r["seen"]["requests"]]
        foreign = [u for u in urls if not u.startswith(tuple(h + "/" for h in hosts))]
        assert foreign == [], f"{r['name']}: requests left eventd and the page: {foreign}"
        assert r["seen"]["pageErrors"] == [], r["seen"]

    # Delivered: exactly the messageIds the browser sent, per source.
    std, bat, snip = results["standard"], results["batching"], results["snippet"]
    for r in (std, bat, snip):
        assert r["seen"]["failed"] == [] and r["seen"]["consoleErrors"] == [], r["seen"]
    assert bat["batch"] == {"status": 200, "size": 5}, bat["batch"]
    assert snip["script"]["status"] == 200 and snip["snippetPage"]["status"] == 200
    app_ids = {*std["ids"].values(), *bat["ids"].values()}
    assert {m["messageId"] for m in stored["app"]} == app_ids
    assert len(stored["app"]) == len(app_ids) == 10
    site_ids = {*snip["ids"].values(), snip["snippetPage"]["messageId"]}
    assert {m["messageId"] for m in stored["site"]} == site_ids
    assert len(stored["site"]) == len(site_ids) == 6

    by_id = {m["messageId"]: m for events in stored.values() for m in events}
    # Both the UMD build and the standalone one call themselves "next-<version>"
    # (only a bundler's import of the package says "npm:next-<version>").
    version = "next-" + json.loads((PACKAGE / "package.json").read_text())["version"]
    for r, page_url in (
        (std, f"{page_origin}/npm.html"),
        (bat, f"{page_origin}/npm.html"),
        (snip, f"{page_origin}/snippet.html?"),
    ):
        name, events = r["name"], {t: by_id[r["ids"][t]] for t in FIVE}
        user = f"user-{name}"
        for kind, m in events.items():
            ctx = m["context"]
            assert m["type"] == kind, (name, m)
            assert ctx["library"]["name"] == "analytics.js", (name, ctx)
            assert ctx["library"]["version"] == version, (name, ctx)
            assert ctx["userAgent"] == r["userAgent"], (name, ctx)
            assert ctx["page"]["url"].startswith(page_url), (name, ctx)
            assert ctx["ip"] == "127.0.0.1"
            # one browser, one anonymous id, from the first call to the last
            assert m["anonymousId"] == r["anonymousId"], (name, kind, m)
        assert "userId" not in events["page"] or events["page"]["userId"] is None
        for kind in ("identify", "track", "group"):  # after identify()
            assert events[kind]["userId"] == user, (name, kind, events[kind])
        assert events["identify"]["traits"]["email"] == f"{name}@example.com"
        assert events["track"]["event"] == "Browser Test Ran"
        assert events["track"]["properties"] == {"scenario": name, "n": 1}
        assert events["group"]["groupId"] == f"acct-{name}"
        # alias() before identify(): from the anonymous visitor to the new user
        assert events["alias"]["userId"] == user
        assert events["alias"]["previousId"] == r["anonymousId"]
        assert r["userId"] == user
    assert len({std["anonymousId"], bat["anonymousId"], snip["anonymousId"]}) == 3
    snippet_page = by_id[snip["snippetPage"]["messageId"]]
    assert snippet_page["type"] == "page" and snippet_page["name"] == "Snippet"
    assert snippet_page["anonymousId"] == snip["anonymousId"]
    # The standalone build fetched its lazily-loaded queryString chunk from eventd
    # (not from Segment's CDN), and that chunk applied ?ajs_aid= to every event.
    chunks = [u for u in snip["seen"]["requests"] if "/analytics-next/bundles/" in u]
    assert chunks and all(u.startswith(f"GET {ev.url}/analytics-next/bundles/") for u in chunks)
    assert snip["anonymousId"] == url_anonymous_id

    # Refused: the source's allowed_origins excludes the page (eventd answers 403,
    # the library drops the event), or no source allows it (the preflight fails,
    # the browser never sends it). Nothing stored either way.
    refused = results["refused-source"]
    assert refused["request"]["status"] == 403, refused
    assert "403" in (refused["failedDelivery"] or ""), refused
    assert "shop" not in stored
    preflight = results["refused-preflight"]
    assert "status" not in preflight["request"], preflight
    assert preflight["request"]["failure"], preflight
    assert any("blocked by CORS policy" in c for c in preflight["seen"]["consoleErrors"])
    assert closed.stored() == []


def _compact(stored: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The stored events with the fields the test checks, for the log."""
    keep = ("type", "messageId", "anonymousId", "userId", "previousId", "event", "groupId", "name")
    return {
        source: [
            {
                **{k: m[k] for k in keep if m.get(k) is not None},
                "library": m["context"]["library"],
                "page.url": m["context"]["page"]["url"],
                "userAgent": m["context"]["userAgent"],
            }
            for m in events
        ]
        for source, events in stored.items()
    }
