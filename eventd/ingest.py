"""The Tracking API over HTTP: Segment's and RudderStack's ``/v1/*`` paths into the outbox.

Owns what a request contributes (write key, peer address, limits, CORS, error
bodies); per-message rules live in :mod:`eventd.normalize`. A request is answered
``200 {"success": true}`` only after its events are committed.

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
import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from eventd.config import Config, SourceConfig
from eventd.live import LiveHub
from eventd.metrics import Metrics
from eventd.normalize import Envelope, InvalidMessage, normalize
from eventd.store import EventRow, StorageUnavailable, Store

log = structlog.get_logger("eventd.ingest")

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
# aiohttp refuses bodies past this before we read them; the real limits are checked below.
CLIENT_MAX_SIZE = MAX_BATCH_BYTES + 64 * 1024

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
CORS_HEADERS = "Authorization, Content-Type, X-Retry-Count"
SOURCE = web.RequestKey("source", SourceConfig)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        self.any_origin = any(not s.allowed_origins for s in config.sources.values())
        self.all_origins = {o for s in config.sources.values() for o in s.allowed_origins}
        # prometheus-client's labels() costs more than the rest of a counter update;
        # the label sets here are few (sources x types, paths), so their children are kept.
        self._ingested = functools.cache(metrics.ingested.labels)
        self._request_seconds = functools.cache(metrics.request_seconds.labels)
        self._suppressed = functools.cache(metrics.suppressed.labels)
        self._plan_findings = functools.cache(metrics.plan_findings.labels)

    def add_routes(self, app: web.Application) -> None:
        # Each route is wrapped rather than the app given a middleware: a middleware
        # costs every request (the admin API's too) a wrapper built per request.
        for path in (*SINGLE_PATHS, *BATCH_PATHS):
            app.router.add_post(f"/v1/{path}", self._wrap(self.handle))
        app.router.add_post("/v1/m", self._wrap(self.telemetry))
        app.router.add_get("/v1/projects/{write_key}/settings", self._wrap(self.project_settings))
        app.router.add_route("OPTIONS", "/v1/{tail:.*}", self.preflight)

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
        origin = request.headers.get("Origin", "")
        if not (self.any_origin or origin in self.all_origins):
            return web.Response(status=403, text="origin not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin or "*",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": "86400",
                "Vary": "Origin",
                **({"Access-Control-Allow-Credentials": "true"} if self.all_origins else {}),
            },
        )

    # -- handlers ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC)
        name = request.path.removeprefix("/v1/")
        is_batch = name in BATCH_PATHS
        body = await request.read()
        limit = MAX_BATCH_BYTES if is_batch else MAX_MESSAGE_BYTES
        if len(body) > limit:
            raise ApiError(
                413 if is_batch else 400,
                "body_too_large",
                f"request body is {len(body)} bytes; the limit is {limit}",
            )
        payload = _parse_json(body)
        source = self._source(request, payload)
        request[SOURCE] = source
        self._check_origin(request, source)

        ip = self._client_ip(request)
        if is_batch:
            items = payload.get("batch")
            if not isinstance(items, list):
                raise ApiError(400, "invalid_batch", "batch must be a list of messages")
            if len(items) > MAX_BATCH_EVENTS:
                raise ApiError(
                    400,
                    "batch_too_large",
                    f"batch has {len(items)} events; the limit is {MAX_BATCH_EVENTS}",
                )
            env = Envelope(
                received_at=received_at,
                ip=ip,
                sent_at=payload.get("sentAt") if isinstance(payload.get("sentAt"), str) else None,
                context=_dict_or_none(payload.get("context")),
                integrations=_dict_or_none(payload.get("integrations")),
            )
            self._shed_load(len(items))
            rows, errors = self._rows(source, items, None, env, check_size=True)
        else:
            self._shed_load(1)
            env = Envelope(received_at=received_at, ip=ip)
            rows, errors = self._rows(source, [payload], SINGLE_PATHS[name], env)
        del payload, body  # parsed objects are garbage while we await the commit
        if errors and not rows:
            raise ApiError(400, errors[0].code, errors[0].message, counted=True)
        if rows:
            try:
                await self.outbox.append(rows)
            except StorageUnavailable as exc:
                log.warning("ingest refused: storage unavailable", error=str(exc))
                raise ApiError(503, "storage_unavailable", str(exc), {"Retry-After": "5"}) from exc
            by_type: dict[str, int] = {}
            for row in rows:
                by_type[row[2]] = by_type.get(row[2], 0) + 1
            for msg_type, count in by_type.items():
                self._ingested(source.name, msg_type).inc(count)
        response = _ok()
        if errors:
            response.headers["X-Eventd-Rejected"] = str(len(errors))
        return response

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
    ) -> tuple[list[EventRow], list[InvalidMessage]]:
        rows: list[EventRow] = []
        errors: list[InvalidMessage] = []
        received_ms = int(env.received_at.timestamp() * 1000)
        live = self.live if self.live else None  # asked once per request, not per event
        suppressed = self.suppressed
        source, plan = src.name, src.tracking_plan
        for index, item in enumerate(items):
            try:
                try:
                    msg = normalize(item, call_type, env)
                except OverflowError:
                    # datetime arithmetic past year 1 or 9999: a timestamp's UTC form or
                    # its skew-corrected form (e.g. timestamp 0001-01-01T00:00+01:00).
                    raise InvalidMessage(
                        "invalid_timestamp", "a timestamp is out of range"
                    ) from None
                if plan is not None and (found := plan.check(msg)):
                    self._plan_findings(source, found[0]["type"]).inc()
                    # Forwarded with what was found, where Segment's Protocols puts it.
                    context = msg.setdefault("context", {})
                    prior = context.get("protocols")
                    context["protocols"] = {
                        **(prior if isinstance(prior, dict) else {}),
                        "violations": found,
                    }
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
            if suppressed and msg.get("userId") in suppressed:
                self._suppressed(source).inc()
                continue
            rows.append(
                (
                    source,
                    msg["messageId"],
                    msg["type"],
                    msg.get("event"),
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

    # -- request facts ----------------------------------------------------------

    def _source(self, request: web.Request, payload: dict[str, Any]) -> SourceConfig:
        """The source whose write key the request carries, in its body or Basic auth."""
        key = payload.get("writeKey")
        if not isinstance(key, str) or not key:
            key = _basic_username(request.headers.get("Authorization", ""))
        if not key:
            raise ApiError(
                401,
                "missing_write_key",
                "no write key: send it as writeKey in the body or as HTTP Basic username",
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
        """The peer, or the first untrusted hop of X-Forwarded-For behind a trusted proxy."""
        peer = request.remote
        forwarded = request.headers.get("X-Forwarded-For")
        if not forwarded or not self._from_proxy(request):
            return peer
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            try:
                addr = ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not any(addr in net for net in self.trusted):
                return hop
        return hops[0] if hops else peer


def _parse_json(body: bytes) -> dict[str, Any]:
    """JSON whatever the Content-Type: analytics-next sends text/plain."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    return payload


def _dumps(value: object) -> bytes:
    """orjson.dumps for a message orjson.loads accepted: loads reads 1024 levels of
    nesting, dumps writes 254, so a deeper message is invalid rather than a crash."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise InvalidMessage("invalid_message", "message is nested too deeply") from None


def _dict_or_none(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _basic_username(header: str) -> str | None:
    """The write key in ``Authorization: Basic base64(key[:])``; Bearer is not a write key."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None
