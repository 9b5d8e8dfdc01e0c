"""analytics.js served by eventd (eventd.bundle) in process over a real socket.

A stand-in for analytics-next's dist/umd directory is written to tmp_path; the
real file, in a real browser, is tests/test_browser.py's job.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from eventd.app import create_app
from eventd.bundle import PREAMBLE
from eventd.config import ConfigError, parse_config

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
KEY = "wk_bundle_test"
ODD_KEY = 'wk_"odd\\key'  # must stay a valid JS string once embedded
STANDALONE = b'try{window.analyticsWriteKey="__WRITE_KEY__"}catch(t){}console.log(1);'
CHUNK = "queryString.bundle.34b193ada8fe288d1bd1.js"


def make_config(tmp_path: Path, analytics_js: Path | None) -> Any:
    server = {"analytics_js": str(analytics_js)} if analytics_js else {}
    return parse_config(
        {
            "server": server,
            "storage": {"path": str(tmp_path / "e.db"), "synchronous": "normal"},
            "sources": {"web": {"write_key": KEY}, "odd": {"write_key": ODD_KEY}},
        },
        "test",
    )


@pytest.fixture
def umd(tmp_path: Path) -> Path:
    d = tmp_path / "umd"
    d.mkdir()
    (d / "standalone.js").write_bytes(STANDALONE)
    (d / "index.js").write_text("/* the npm UMD build: not served */")
    (d / "standalone.js.map").write_text("{}")
    (d / CHUNK).write_text("/* chunk */")
    (d / (CHUNK + ".gz")).write_bytes(gzip.compress(b"/* chunk */"))
    return d


@pytest.fixture
async def client(tmp_path: Path, umd: Path, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(create_app(make_config(tmp_path, umd / "standalone.js"), {}))


def script_path(key: str) -> str:
    return f"/analytics.js/v1/{quote(key, safe='')}/analytics.min.js"


async def test_script_embeds_the_write_key_behind_the_preamble(client: Client) -> None:
    resp = await client.get(script_path(KEY))
    assert resp.status == 200
    assert resp.content_type == "application/javascript"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    body = await resp.read()
    assert body == PREAMBLE + STANDALONE.replace(b'"__WRITE_KEY__"', f'"{KEY}"'.encode())

    odd = await (await client.get(script_path(ODD_KEY))).read()
    assert b'window.analyticsWriteKey="wk_\\"odd\\\\key"' in odd  # JSON-escaped


async def test_script_gzip_and_revalidation(client: Client) -> None:
    resp = await client.get(script_path(KEY), headers={"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"
    assert (await resp.read()).endswith(b"console.log(1);")  # the client decompressed it
    etag = resp.headers["ETag"]

    again = await client.get(script_path(KEY), headers={"If-None-Match": f'W/{etag}, "x"'})
    assert again.status == 304 and again.headers["ETag"] == etag
    other = await client.get(script_path(ODD_KEY), headers={"If-None-Match": etag})
    assert other.status == 200  # each key's script is its own resource


async def test_unknown_write_key_is_404(client: Client) -> None:
    resp = await client.get(script_path("wk_nope"))
    assert resp.status == 404
    assert (await resp.json())["code"] == "unknown_write_key"


async def test_chunks_beside_the_script(client: Client) -> None:
    resp = await client.get(f"/analytics-next/bundles/{CHUNK}")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["Content-Type"].startswith("application/javascript")
    assert await resp.text() == "/* chunk */"
    for name in ("index.js", "standalone.js.map", "nope.bundle.0123456789ab.js", "..%2Fe.db"):
        assert (await client.get(f"/analytics-next/bundles/{name}")).status == 404, name


async def test_not_configured_says_which_key_to_set(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, None), {}))
    for path in (script_path(KEY), f"/analytics-next/bundles/{CHUNK}"):
        resp = await client.get(path)
        assert resp.status == 404
        answer = await resp.json()
        assert answer["code"] == "analytics_js_not_configured"
        assert "server.analytics_js" in answer["message"]


def test_unreadable_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.analytics_js = .*missing\.js.*standalone\.js"):
        create_app(make_config(tmp_path, tmp_path / "missing.js"), {})
