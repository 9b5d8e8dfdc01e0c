"""The Tracking API over HTTP: Segment's and RudderStack's paths into the outbox.

Owns what a request contributes (write key, peer address, limits, body encoding,
CORS, error bodies); per-message rules live in :mod:`eventd.normalize`. A request
is answered ``200 {"success": true}`` only after its events are committed.

Paths: Segment's ``/v1/*`` (and analytics-next's one-letter ones), RudderStack's
``/beacon/v1/batch?writeKey=`` (navigator.sendBeacon), ``GET /pixel/v1/page`` and
``/pixel/v1/track`` (query-string events) and ``GET /sourceConfig`` (what
``@rudderstack/analytics-js`` 3.x fetches from its ``configUrl`` before it sends).
Any other ``/v1/...`` is a JSON 404, a known one with the wrong method a JSON 405.

Sizes: one rule at every size. A request body (as decompressed) over its path's
limit, :data:`MAX_MESSAGE_BYTES` for one message and :data:`MAX_BATCH_BYTES` for a
batch, is ``413 body_too_large``; a batch item over :data:`MAX_MESSAGE_BYTES` is
dropped like any invalid item.

Values arrive as sent: the body is read by msgspec (integers of any width kept
exact) unless it holds text msgspec refuses (a lone surrogate, an invalid UTF-8
byte); then by the standard library's parser, and the strings are repaired
(:func:`eventd.normalize.scrub_unicode`).

Batches with some invalid items: like Segment, the valid items are stored and the
invalid ones are dropped; unlike Segment, never silently: each drop is logged at
warning, counted in ``eventd_rejected_events``, shown on the live stream, and the
response carries ``X-Eventd-Rejected: N``. A batch whose items are all invalid is
a 400 naming the first error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from eventd import codec
from eventd.config import Config, SourceConfig
from eventd.live import LiveHub
from eventd.metrics import Metrics
from eventd.normalize import INVALID_UNICODE, Envelope, InvalidMessage, normalize, scrub_unicode
from eventd.store import EventRow, StorageUnavailable, Store

log = structlog.get_logger("eventd.ingest")

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
# aiohttp refuses (413) a body past this as it reads it, decompressed; handle() checks
# the path's own limit, the same way, before and after reading.
CLIENT_MAX_SIZE = MAX_BATCH_BYTES
# Content-Encodings aiohttp decodes here (br and zstd need libraries not installed).
ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
SINGLE_PATHS = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    # analytics-next's one-letter paths
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_PATHS = ("batch", "import", "b")
PIXEL_TYPES = ("page", "track")
# Always allowed in a preflight; the headers it asks for are allowed besides.
CORS_HEADERS = "Authorization, Content-Type, X-Retry-Count"
# A token list (RFC 9110 field names): what a preflight's request may reflect.
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
FALLBACK_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# A 1x1 transparent GIF: what a pixel answers, as RudderStack's does.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
SOURCE = web.RequestKey("source", SourceConfig)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# msgspec's generic JSON decoder: orjson's speed, with integers of any width kept exact
# (orjson turns one past 64 bits into a float, so every body had to be scanned first).
_decode = msgspec.json.Decoder().decode


class ApiError(Exception):
    """An error answered as Segment's ``{"code", "message"}`` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        counted: bool = False,  # its events were already counted as rejected, one by one
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.counted = counted


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"code": code, "message": message}),
        content_type="application/json",
        headers=headers or None,
    )


def _ok() -> web.Response:
    return web.Response(body=b'{"success":true}', content_type="application/json")


class Ingest:
    def __init__(
        self,
        config: Config,
        outbox: Store,
        metrics: Metrics,
        live: LiveHub,
        suppressed: AbstractSet[str] = frozenset(),
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = metrics
        self.live = live
        # userIds whose events are acknowledged and not stored (suppressions.py keeps it)
        self.suppressed = suppressed
        self.sources_by_key = config.source_by_key()
        self.trusted = [
            ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies
        ]
        # Browsers send only to Tracking API sources: a webhook source opens no origin.
        self.any_origin = any(not s.allowed_origins for s in self.sources_by_key.values())
        self.all_origins = {o for s in self.sources_by_key.values() for o in s.allowed_origins}
        # prometheus-client's labels() costs more than the rest of a counter update;
        # the label sets here are few (sources x types, paths), so their children are kept.
        self._ingested = functools.cache(metrics.ingested.labels)
        self._request_seconds = functools.cache(metrics.request_seconds.labels)
        self._suppressed = functools.cache(metrics.suppressed.labels)
        self._plan_findings = functools.cache(metrics.plan_findings.labels)
        self._repaired = functools.cache(metrics.repaired.labels)

    def add_routes(self, app: web.Application) -> None:
        # Each route is wrapped rather than the app given a middleware: a middleware
        # costs every request (the admin API's too) a wrapper built per request.
        for path in (*SINGLE_PATHS, *BATCH_PATHS):
            app.router.add_post(f"/v1/{path}", self._wrap(self.handle))
        app.router.add_post("/beacon/v1/batch", self._wrap(self.handle))
        for call_type in PIXEL_TYPES:
            # GET only: a HEAD (a link checker, a prefetch) must not store an event
            app.router.add_route("GET", f"/pixel/v1/{call_type}", self._wrap(self.pixel))
        app.router.add_post("/v1/m", self._wrap(self.telemetry))
        app.router.add_get("/v1/projects/{write_key}/settings", self._wrap(self.project_settings))
        app.router.add_get("/sourceConfig", self._wrap(self.source_config))
        app.router.add_get("/sourceConfig/", self._wrap(self.source_config))
        app.router.add_route("OPTIONS", "/v1/{tail:.*}", self.preflight)
        app.router.add_route("OPTIONS", "/sourceConfig", self.preflight)
        app.router.add_route("OPTIONS", "/sourceConfig/", self.preflight)

    def add_fallback_routes(self, app: web.Application) -> None:
        """JSON 404/405 for any other ``/v1/...``; added after every other route (the
        features' too), since aiohttp matches routes in the order they were added."""
        for method in FALLBACK_METHODS:
            app.router.add_route(method, "/v1/{tail:.*}", self._wrap(self.unknown))

    def _wrap(self, handler: Handler) -> Handler:
        return functools.partial(self.cors_and_errors, handler=handler)

    # -- errors and CORS, around every /v1 route ---------------------------------

    async def cors_and_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            if not exc.counted:
                self.metrics.rejected.labels(exc.code).inc()
            log.debug("request refused", path=request.path, status=exc.status, code=exc.code)
            response = error_response(exc.status, exc.code, exc.message, **(exc.headers or {}))
        except web.HTTPRequestEntityTooLarge:
            self.metrics.rejected.labels("body_too_large").inc()
            response = error_response(
                413, "body_too_large", f"request body is over {MAX_BATCH_BYTES} bytes"
            )
        except web.HTTPException as exc:
            response = error_response(exc.status, "http_error", exc.reason)
        except (HttpProcessingError, RequestPayloadError) as exc:
            # The body could not be read: corrupt gzip/deflate, a chunked or
            # Content-Length body cut short. The client's fault, and final.
            # (aiohttp raises the parser's error wrapped in RequestPayloadError.)
            cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
            reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
            self.metrics.rejected.labels("unreadable_body").inc()
            log.info("request body unreadable", path=request.path, error=reason)
            response = error_response(
                400, "unreadable_body", f"the request body cannot be read: {reason}"
            )
            response.force_close()
            # The stream holds the error: marked ended, aiohttp does not read the rest
            # of it after the answer (and log the same error again with a traceback).
            request.content.feed_eof()
        except ConnectionResetError:
            # The client closed before its body was complete (Content-Length not
            # reached): nobody to answer, nothing to store, nothing to log loudly.
            log.info("client closed mid-body", path=request.path)
            response = error_response(400, "unreadable_body", "the request body was cut short")
            response.force_close()
        origin = request.headers.get("Origin")
        if origin and request.method != "OPTIONS":
            source = request.get(SOURCE)
            allowed = source.allowed_origins if source is not None else ()
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            if allowed:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        # By route, not path: /v1/projects/{write_key}/settings must not label by key.
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        self._request_seconds(path).observe(time.perf_counter() - started)
        return response

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight: for an allowed origin, the headers it asks to send are
        allowed (RudderStack's SDK sends AnonymousId, SentAt and Rsa-* retry headers;
        others may add more), as long as they are a list of header names."""
        origin = request.headers.get("Origin", "")
        if not (self.any_origin or origin in self.all_origins):
            return error_response(
                403, "origin_not_allowed", f"origin {origin!r} is not an allowed origin"
            )
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin or "*",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": (
                    f"{CORS_HEADERS}, {asked}" if _HEADER_LIST.match(asked) else CORS_HEADERS
                ),
                "Access-Control-Max-Age": "86400",
                "Vary": "Origin",
                **({"Access-Control-Allow-Credentials": "true"} if self.all_origins else {}),
            },
        )

    # -- handlers ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """A message (``/v1/track``...) or a batch (``/v1/batch``, ``/beacon/v1/batch``)."""
        received_at = datetime.now(UTC)
        name = request.path.rpartition("/")[2]
        is_batch = name in BATCH_PATHS
        body = await self._read(request, MAX_BATCH_BYTES if is_batch else MAX_MESSAGE_BYTES)
        payload, lossless = _parse_json(body)
        source = self._source(request, payload)
        request[SOURCE] = source
        self._check_origin(request, source)

        ip = self._client_ip(request)
        if is_batch:
            items = payload.get("batch")
            if not isinstance(items, list):
                raise ApiError(400, "invalid_batch", "batch must be a list of messages")
            if not items:
                raise ApiError(400, "empty_batch", "batch has no messages: nothing to store")
            if len(items) > MAX_BATCH_EVENTS:
                raise ApiError(
                    400,
                    "batch_too_large",
                    f"batch has {len(items)} events; the limit is {MAX_BATCH_EVENTS}",
                )
            # What the batch itself carries is repaired once; each item counts it.
            shared, shared_fixes = (
                scrub_unicode({k: v for k, v in payload.items() if k != "batch"})
                if lossless
                else (payload, 0)
            )
            sent_at = shared.get("sentAt")
            env = Envelope(
                received_at=received_at,
                ip=ip,
                sent_at=sent_at if sent_at else None,
                context=_dict_or_none(shared.get("context")),
                integrations=_dict_or_none(shared.get("integrations")),
            )
            self._shed_load(len(items))
            rows, errors = self._rows(
                source, items, None, env, check_size=True, scrub=lossless, fixed=shared_fixes
            )
        else:
            self._shed_load(1)
            env = Envelope(received_at=received_at, ip=ip)
            rows, errors = self._rows(source, [payload], SINGLE_PATHS[name], env, scrub=lossless)
        del payload, body  # parsed objects are garbage while we await the commit
        return await self._answer(source, rows, errors)

    async def _answer(
        self, source: SourceConfig, rows: list[EventRow], errors: list[InvalidMessage]
    ) -> web.Response:
        """Commit what was usable and say so; a 400 only when nothing was."""
        if errors and not rows:
            raise ApiError(400, errors[0].code, errors[0].message, counted=True)
        if rows:
            await self._commit(source, rows)
        response = _ok()
        if errors:
            response.headers["X-Eventd-Rejected"] = str(len(errors))
        return response

    async def accept(
        self, source: SourceConfig, messages: list[Any], env: Envelope
    ) -> tuple[int, list[InvalidMessage]]:
        """The message pipeline for messages eventd built itself (a cloud-app source's,
        eventd/webhooks.py), each with its own ``type``: the same load shedding,
        normalization, tracking plan, suppression check, live stream, commit and
        metrics as a /v1/batch. Returns (events stored, messages rejected); raises
        ApiError (429 overloaded, 503 storage unavailable) as the Tracking API does."""
        self._shed_load(len(messages))
        rows, errors = self._rows(source, messages, None, env)
        if rows:
            await self._commit(source, rows)
        return len(rows), errors

    async def _commit(self, source: SourceConfig, rows: list[EventRow]) -> None:
        """Append ``rows`` (one group commit) and count them as ingested."""
        try:
            await self.outbox.append(rows)
        except StorageUnavailable as exc:
            log.warning("ingest refused: storage unavailable", error=str(exc))
            raise ApiError(503, "storage_unavailable", str(exc), {"Retry-After": "5"}) from exc
        if len(rows) == 1:  # a single event: no tally to build
            self._ingested(source.name, rows[0][2]).inc()
            return
        by_type: dict[str, int] = {}
        for row in rows:
            by_type[row[2]] = by_type.get(row[2], 0) + 1
        for msg_type, count in by_type.items():
            self._ingested(source.name, msg_type).inc(count)

    async def _read(self, request: web.Request, limit: int) -> bytes:
        """The body, decoded from its Content-Encoding, at most ``limit`` bytes."""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ENCODINGS:
            raise ApiError(
                400,
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r} is not supported: send gzip, deflate or none",
            )
        # Unencoded, Content-Length is the size: refused before reading. (An encoded
        # body may decode smaller than it is, gzip of random bytes: read it.)
        length = request.content_length
        if encoding in ("", "identity") and length is not None and length > limit:
            raise _too_large(request, limit)
        body = await request.read()
        if len(body) > limit:
            raise _too_large(request, limit)
        return body

    async def pixel(self, request: web.Request) -> web.Response:
        """RudderStack's pixel: ``GET /pixel/v1/{page|track}?writeKey=&anonymousId=&...``
        (for e-mails and pages without JavaScript). Each other query parameter is a
        field, dotted names nested (``properties.plan=pro``), values strings; a page
        without a name is "Unknown Page", as rudder-server fills it. Answers a GIF."""
        received_at = datetime.now(UTC)
        call_type = request.path.rpartition("/")[2]
        query = request.query
        message: dict[str, Any] = {"channel": "web"}
        for key in query:
            if key != "writeKey" and key:
                _set_path(message, key.split("."), query[key])
        if isinstance(message.get("anonymousId"), str):
            # rudder-server strips the quotes some templates put around it
            message["anonymousId"] = message["anonymousId"].removeprefix('"').removesuffix('"')
        if call_type == "page" and not message.get("name"):
            message["name"] = "Unknown Page"
        source = self._source(request, {"writeKey": query.get("writeKey")})
        request[SOURCE] = source
        self._shed_load(1)
        env = Envelope(received_at=received_at, ip=self._client_ip(request))
        rows, errors = self._rows(source, [message], call_type, env)
        await self._answer(source, rows, errors)
        return web.Response(
            body=PIXEL_GIF, content_type="image/gif", headers={"Cache-Control": "no-store"}
        )

    async def unknown(self, request: web.Request) -> web.Response:
        """Any ``/v1/...`` no other route serves: 405 for a known path, else 404."""
        tail = request.match_info.get("tail", "")
        if tail in SINGLE_PATHS or tail in BATCH_PATHS or tail == "m":
            raise ApiError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}: use POST",
                {"Allow": "POST, OPTIONS"},
            )
        raise ApiError(404, "not_found", f"no Tracking API path {request.path[:200]!r}")

    def _shed_load(self, incoming: int) -> None:
        """429 + Retry-After when too many events already wait for their commit, before
        memory and latency grow without bound. An idle store takes any batch, so one
        larger than the limit is not refused forever."""
        pending = self.outbox.pending_events
        if pending and pending + incoming > self.config.server.max_pending_events:
            raise ApiError(
                429,
                "overloaded",
                f"{pending} events are waiting to be written; retry after 1 s",
                {"Retry-After": "1"},
            )

    def _rows(
        self,
        src: SourceConfig,
        items: list[Any],
        call_type: str | None,
        env: Envelope,
        check_size: bool = False,
        scrub: bool = False,
        fixed: int = 0,
    ) -> tuple[list[EventRow], list[InvalidMessage]]:
        """Rows to store and the items' errors. ``scrub``: the items may hold lone
        surrogates (:func:`_parse_json`'s lossless path); ``fixed``: how many the
        request's shared parts (batch context, ...) had, counted for every item."""
        rows: list[EventRow] = []
        errors: list[InvalidMessage] = []
        received_ms = int(env.received_at.timestamp() * 1000)
        live = self.live if self.live else None  # asked once per request, not per event
        suppressed = self.suppressed
        source, plan = src.name, src.tracking_plan
        for index, item in enumerate(items):
            repairs: list[dict[str, Any]] = []
            if scrub:
                item, n = scrub_unicode(item)
                if n + fixed:
                    repairs.append({"reason": INVALID_UNICODE, "replaced": n + fixed})
            try:
                msg = normalize(item, call_type, env, repairs)
                if plan is not None and (found := plan.check(msg)):
                    self._plan_findings(source, found[0]["type"]).inc()
                    # Forwarded with what was found, where Segment's Protocols puts it.
                    context = msg.setdefault("context", {})
                    prior = context.get("protocols")
                    context["protocols"] = {
                        **(prior if isinstance(prior, dict) else {}),
                        "violations": found,
                    }
                try:  # orjson straight away; _dumps for what it cannot write
                    body = orjson.dumps(msg)
                except TypeError:
                    body = _dumps(msg)
                # The limit is on what the client sent; the stored form is a little
                # larger, so only a large one is measured again as sent.
                if (
                    check_size
                    and len(body) > MAX_MESSAGE_BYTES
                    and len(_dumps(item)) > MAX_MESSAGE_BYTES
                ):
                    raise InvalidMessage(
                        "message_too_large", f"message is over {MAX_MESSAGE_BYTES} bytes"
                    )
            except InvalidMessage as exc:
                errors.append(exc)
                self.metrics.rejected.labels(exc.code).inc()
                log.warning(
                    "message rejected",
                    source=source,
                    index=index,
                    code=exc.code,
                    reason=exc.message,
                )
                if live is not None:
                    live.publish(
                        source,
                        {
                            "rejected": True,
                            "source": source,
                            "code": exc.code,
                            "reason": exc.message,
                            "message": item,
                        },
                    )
                continue
            for repair in repairs:
                self._repaired(repair["reason"]).inc()
                log.warning(
                    "message repaired",
                    source=source,
                    index=index,
                    message_id=msg["messageId"],
                    # as text, cut short: the value as sent may be anything (an
                    # integer past 64 bits, which the JSON log cannot write, a
                    # long string); the stored event keeps it whole
                    **{k: str(v)[:200] for k, v in repair.items()},
                )
            if suppressed and msg.get("userId") in suppressed:
                self._suppressed(source).inc()
                continue
            rows.append(
                (
                    source,
                    msg["messageId"],
                    msg["type"],
                    # the event column: a track's name; what another type carries
                    # under "event" (an object, a number) stays in the body only
                    event if isinstance(event := msg.get("event"), str) else None,
                    msg.get("userId"),
                    msg.get("anonymousId"),
                    received_ms,
                    body,
                )
            )
            if live is not None:
                live.publish(source, {"rejected": False, "source": source, "message": msg})
        return rows, errors

    async def telemetry(self, request: web.Request) -> web.Response:
        """analytics-next's own metrics (``/v1/m``): accepted and discarded."""
        await request.read()
        return _ok()

    async def project_settings(self, request: web.Request) -> web.Response:
        """What analytics-next fetches from its cdnURL before it sends anything."""
        source = self.sources_by_key.get(request.match_info["write_key"])
        if source is None:
            raise ApiError(404, "unknown_write_key", "no source has this write key")
        request[SOURCE] = source
        host = request.headers.get("X-Forwarded-Host") if self._from_proxy(request) else None
        scheme = request.headers.get("X-Forwarded-Proto") if self._from_proxy(request) else None
        return web.json_response(
            {
                "integrations": {
                    "Segment.io": {
                        "apiKey": source.write_key,
                        "apiHost": f"{host or request.host}/v1",
                        "protocol": scheme or request.scheme,
                    }
                },
                "plan": {"track": {"__default": {"enabled": True}}},
                "metrics": {"sampleRate": 0},
                "remotePlugins": [],
                "enabledMiddleware": {},
            },
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def source_config(self, request: web.Request) -> web.Response:
        """What ``@rudderstack/analytics-js`` 3.x fetches from its ``configUrl``
        (``GET {configUrl}/sourceConfig/?p=npm&v=3.x&writeKey=...``, Basic auth): it
        needs ``source.id``, ``source.config`` (an object) and ``source.destinations``
        (a list) and stops when ``source.enabled`` is false; it reads ``name``,
        ``workspaceId`` and ``config.statsCollection`` (its error and metrics reports
        to RudderStack, off here). No device-mode destinations: eventd routes."""
        source = self._source(request, {})
        request[SOURCE] = source
        return web.json_response(
            {
                "isHosted": False,
                "source": {
                    "id": source.name,
                    "name": source.name,
                    "writeKey": source.write_key,
                    "enabled": True,
                    "workspaceId": "eventd",
                    "config": {
                        "statsCollection": {
                            "errors": {"enabled": False},
                            "metrics": {"enabled": False},
                        }
                    },
                    "destinations": [],
                },
            },
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    # -- request facts ----------------------------------------------------------

    def _source(self, request: web.Request, payload: dict[str, Any]) -> SourceConfig:
        """The source whose write key the request carries: in its body, as the HTTP Basic
        username, or as ``?writeKey=`` (RudderStack's beacon and pixel paths)."""
        key = payload.get("writeKey")
        if not isinstance(key, str) or not key:
            key = _basic_username(request.headers.get("Authorization", ""))
        if not key:
            key = request.query.get("writeKey")
        if not key:
            raise ApiError(
                401,
                "missing_write_key",
                "no write key: send it as writeKey in the body, as HTTP Basic username"
                " or as ?writeKey=",
            )
        source = self.sources_by_key.get(key)
        if source is None:
            raise ApiError(401, "invalid_write_key", "the write key matches no source")
        return source

    def _check_origin(self, request: web.Request, source: SourceConfig) -> None:
        origin = request.headers.get("Origin")
        if origin and source.allowed_origins and origin not in source.allowed_origins:
            raise ApiError(
                403,
                "origin_not_allowed",
                f"origin {origin} is not in sources.{source.name}.allowed_origins",
            )

    def _from_proxy(self, request: web.Request) -> bool:
        peer = request.remote
        if not peer or not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def _client_ip(self, request: web.Request) -> str | None:
        """The peer or, behind a trusted proxy, the nearest hop that is not one.

        Hops come from RFC 7239 ``Forwarded`` (``for=``) when present, else from
        ``X-Forwarded-For``; an entry may carry a port (``203.0.113.7:54321``,
        ``[2001:db8::1]:443``). Read right to left, skipping trusted proxies; an
        entry that is not an address (``unknown``, an obfuscated id) ends the walk:
        what lies beyond it cannot be vouched for.
        """
        peer = request.remote
        if not self._from_proxy(request):
            return peer
        if "Forwarded" in request.headers:
            hops = _forwarded_for(request.headers.getall("Forwarded"))
        else:
            hops = [h for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                return peer
            if not any(addr in net for net in self.trusted):
                return str(addr)
        return str(_address(hops[0])) if hops else peer


def _address(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from one forwarding entry: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:80`` (quoted or not); None if it is none."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None


def _forwarded_for(values: list[str]) -> list[str]:
    """The ``for=`` of each element of RFC 7239 ``Forwarded`` headers, in order; an
    element without one is ``unknown`` (it still stands for a hop)."""
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            found = "unknown"
            for pair in element.split(";"):
                name, _, val = pair.partition("=")
                if name.strip().lower() == "for":
                    found = val.strip()
            hops.append(found)
    return hops


def _set_path(target: dict[str, Any], path: list[str], value: str) -> None:
    """``target[a][b]... = value`` for a dotted query name, making objects on the way
    (a scalar in the way is replaced, as rudder-server's sjson does)."""
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


def _parse_json(body: bytes) -> tuple[dict[str, Any], bool]:
    """The body as a JSON object (whatever the Content-Type: analytics-next sends
    text/plain), and whether the lossless path read it (its strings may then hold
    lone surrogates, for :func:`~eventd.normalize.scrub_unicode`).

    msgspec reads nearly every body: in C, every integer exact (up to Python's own
    4,300 digits), no scan for long digit runs first. What it refuses (invalid UTF-8,
    a lone surrogate, NaN, a number past a double's range, nesting past its
    recursion limit, invalid JSON) takes the paths it had before msgspec, so the
    answer to such a body is unchanged: orjson, unless the body may hold an integer
    past 64 bits (orjson reads those as floats); then the standard library's parser,
    which keeps every digit and every character (invalid bytes as lone surrogates, by
    ``surrogateescape``) and refuses NaN and Infinity with a clear message.
    """
    try:
        payload = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        payload = None  # perhaps only what msgspec refuses: the paths below say
    else:
        if isinstance(payload, dict):
            return payload, False
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    if not codec.may_hold_wide_int(body):
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None  # perhaps only what orjson refuses: try the lossless path
        if isinstance(payload, dict):
            return payload, False
    try:
        payload = json.loads(
            body.decode("utf-8", "surrogateescape"),
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    return payload, True


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of a double's range")
    return value


def _dumps(value: object) -> bytes:
    """The stored form of a message, every digit kept (:func:`eventd.codec.dumps`).
    orjson reads 1024 levels of nesting but writes 254, and destinations read with
    orjson: a deeper message is invalid rather than a crash."""
    try:
        return codec.dumps(value)
    except (TypeError, RecursionError):
        raise InvalidMessage("invalid_message", "message is nested too deeply") from None


def _too_large(request: web.Request, limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", f"request body is over {limit} bytes, the limit for {request.path}"
    )


def _dict_or_none(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@functools.lru_cache(maxsize=256)
def _basic_username(header: str) -> str | None:
    """The write key in ``Authorization: Basic base64(key[:])``; Bearer is not a write key.
    Cached: an SDK sends the same header on every request, and decoding it cost more
    than the look-up (a few hundred distinct keys at most are kept)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None
