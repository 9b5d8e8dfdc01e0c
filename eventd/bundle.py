"""analytics.js served by eventd itself, so a website needs no CDN.

Owns two GET routes, both answered from the files of ``@segment/analytics-next``
that ``server.analytics_js`` points at (its ``dist/umd/standalone.js``):

- ``/analytics.js/v1/{writeKey}/analytics.min.js``: the standalone build, as
  Segment's CDN serves it (the write key embedded in place of
  ``__WRITE_KEY__``), behind a short preamble that tells the library where it
  was loaded from;
- ``/analytics-next/bundles/{chunk}``: the webpack chunks next to it, which the
  library loads on demand from ``{cdn}/analytics-next/bundles/``.

Why the preamble: the library takes its "CDN" (where it fetches
``/v1/projects/{writeKey}/settings`` and its chunks) from ``analytics._cdn``,
else from a script tag matching ``https://…/analytics.js/v1/…``, else
``https://cdn.segment.com``. Over plain http, or behind a proxy that rewrites
the path, it would ask Segment's CDN. The preamble sets ``analytics._cdn`` to
the script's own URL minus ``/analytics.js/v1/…``, unless the page set it, so a
snippet works with only its host changed. It creates ``window.analytics`` when
the page has none (a bare script tag): the library reads the CDN from that
global before it applies any custom global key.

The file is read once at start-up; a missing or unreadable file is a
:class:`~eventd.config.ConfigError` then, not a 404 per request.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from eventd.config import Config, ConfigError
from eventd.ingest import error_response

log = structlog.get_logger("eventd.bundle")

SCRIPT_PATH = "/analytics.js/v1/{write_key}/analytics.min.js"
CHUNKS_PATH = "/analytics-next/bundles/{name}"
# Only the content-hashed chunks webpack emits (e.g. queryString.bundle.34b1….js);
# anything else in the directory (source maps, index.js) is not served.
CHUNK_NAME = re.compile(r"^[A-Za-z0-9_-]+\.bundle\.[0-9a-f]{8,}\.js$")
PLACEHOLDER = b'"__WRITE_KEY__"'
PREAMBLE = (
    b"/* eventd: load settings and bundles from where this script was served */\n"
    b"(function(){try{var s=document.currentScript,"
    b"a=window.analytics=window.analytics||[];"
    b'if(s&&s.src&&!a._cdn)a._cdn=s.src.replace(/\\/analytics\\.js\\/v1\\/.*$/,"")'
    b"}catch(e){}})();\n"
)
JS = "application/javascript"
# The script's name never changes while its content does (an npm upgrade), so
# browsers revalidate after a few minutes; chunk names carry their content hash.
SCRIPT_CACHE = "public, max-age=300"
CHUNK_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Script:
    """One write key's analytics.min.js, plain and gzipped."""

    body: bytes
    gzipped: bytes
    etag: str


class Bundle:
    def __init__(self, config: Config) -> None:
        path = config.server.analytics_js
        self.dir: Path | None = path.parent if path is not None else None
        self.scripts: dict[str, Script] = {}
        if path is None:
            return
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{config.origin}: server.analytics_js = {str(path)!r}: cannot read it "
                f"({exc.strerror}): expected the path of @segment/analytics-next's "
                "dist/umd/standalone.js (npm install @segment/analytics-next)"
            ) from exc
        if PLACEHOLDER not in source:
            # Still served: a build with a key already embedded (Segment's own
            # analytics.min.js) works, but the write key in the URL is then ignored.
            log.warning(
                "server.analytics_js has no __WRITE_KEY__ placeholder; "
                "is it analytics-next's dist/umd/standalone.js?",
                path=str(path),
            )
        for source_config in config.sources.values():
            key = source_config.write_key
            body = PREAMBLE + source.replace(PLACEHOLDER, orjson.dumps(key))
            self.scripts[key] = Script(
                body=body,
                gzipped=gzip.compress(body, mtime=0),
                etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(SCRIPT_PATH, self.script)
        app.router.add_get(CHUNKS_PATH, self.chunk)

    async def script(self, request: web.Request) -> web.StreamResponse:
        if self.dir is None:
            return _not_configured()
        script = self.scripts.get(request.match_info["write_key"])
        if script is None:
            return error_response(404, "unknown_write_key", "no source has this write key")
        headers = {"Cache-Control": SCRIPT_CACHE, "ETag": script.etag, "Vary": "Accept-Encoding"}
        if script.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        body = script.body
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = script.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, content_type=JS, headers=headers)

    async def chunk(self, request: web.Request) -> web.StreamResponse:
        if self.dir is None:
            return _not_configured()
        name = request.match_info["name"]
        path = self.dir / name
        if not CHUNK_NAME.match(name) or not path.is_file():
            return error_response(404, "not_found", f"no analytics.js bundle named {name!r}")
        # FileResponse answers conditional requests and serves the .gz beside the
        # file when the browser accepts gzip (the npm package ships both).
        return web.FileResponse(path, headers={"Cache-Control": CHUNK_CACHE, "Content-Type": JS})


def add_routes(app: web.Application, config: Config) -> None:
    """Serve analytics.js (or a 404 saying how to enable it) on ``app``."""
    Bundle(config).add_routes(app)


def _not_configured() -> web.Response:
    return error_response(
        404,
        "analytics_js_not_configured",
        "eventd serves analytics.js only when server.analytics_js is set to the path of "
        "@segment/analytics-next's dist/umd/standalone.js",
    )


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
