"""The admin HTTP API (``/admin/*``) and ``/metrics``, behind the admin bearer token.

Reads go through the Store and ``Dispatcher.status()``; changes go through the
Store (purge, suppressions) or the Dispatcher (redrive, replay: it wakes the
destination's worker). The CLI's daemon verbs are thin clients of these routes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from eventd import __version__, codec
from eventd.admin.params import BadRequest, json_body, parse_time, redrive_ids, user_id
from eventd.admin.scrape import ScrapeReading
from eventd.config import Config
from eventd.console.session import admin_session_ok
from eventd.delivery.dispatcher import Dispatcher
from eventd.live import LiveHub
from eventd.metrics import CONTENT_TYPE_LATEST, Metrics
from eventd.store import (
    Conflict,
    DeadLetter,
    NotSupported,
    StorageUnavailable,
    Store,
    iso_ms,
    now_ms,
)
from eventd.suppressions import Suppressions

log = structlog.get_logger("eventd.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Dead letters one list request returns at most.
MAX_LIST = 10000


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as an ``application/json`` answer."""
    body = codec.dumps(data)  # a stored event's integers past 64 bits, exact
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    """The admin API's error shape: ``{"code", "message"}`` with ``status``."""
    return json_response({"code": code, "message": message}, status)


def _dead_letter(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as the list shows it (no body)."""
    return {
        "id": d.id,
        "destination": d.destination,
        "seq": d.seq,
        "source": d.source,
        "message_id": d.message_id,
        "attempts": d.attempts,
        "error": d.error,
        "failed_at": iso_ms(d.failed_at),
        "state": d.state,
        # Only a node-local destination's letter on the cluster has one: the node
        # whose file refused it (and which resends its redrive).
        **({"node": d.node} if d.node is not None else {}),
    }


def guarded(token: str | None, handler: Handler) -> Handler:
    """``handler`` behind the admin bearer token, with the admin API's error bodies
    (401/403, a BadRequest as a JSON 400, an unavailable store as a 503, what
    the storage backend cannot do yet as a 501). Features
    that add ``/admin/*`` routes through ``eventd_routes`` wrap them in it too."""

    async def route(request: web.Request) -> web.StreamResponse:
        if not token:
            return error_response(403, "admin_disabled", "the admin API is off: set admin.token")
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        # The console's session cookie (CSRF-checked for changes) also signs in.
        if not (
            hmac.compare_digest(given.encode(), expected.encode()) or admin_session_ok(request)
        ):
            return error_response(401, "unauthorized", "send Authorization: Bearer <admin.token>")
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(400, "bad_request", str(exc))
        except StorageUnavailable as exc:
            resp = error_response(503, "storage_unavailable", str(exc))
            resp.headers["Retry-After"] = "5"
            return resp
        except NotSupported as exc:  # the storage backend cannot do it yet
            return error_response(501, "not_implemented", str(exc))
        except Conflict as exc:  # e.g. a redrive of a letter whose node is gone
            return error_response(409, "conflict", str(exc))

    return route


class Admin:
    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        metrics: Metrics,
        live: LiveHub,
        suppressions: Suppressions,
        started_at: float,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.live = live
        self.suppressions = suppressions
        self.started_at = started_at
        self.token = config.admin.token
        self.scrape = ScrapeReading(dispatcher.status, metrics)

    def add_routes(self, app: web.Application) -> None:
        # Each route is wrapped in the token check rather than the app given a
        # middleware: a middleware would cost every ingest request a wrapper too.
        r = app.router
        metrics = self.metrics_endpoint
        r.add_get("/metrics", self._guard(metrics) if self.config.admin.metrics_auth else metrics)
        r.add_get("/admin/runtime", self._guard(self.runtime))
        r.add_get("/admin/sources", self._guard(self.sources))
        r.add_get("/admin/destinations", self._guard(self.destinations))
        r.add_get("/admin/dead-letters", self._guard(self.list_dead_letters))
        r.add_get("/admin/dead-letters/{id:\\d+}", self._guard(self.show_dead_letter))
        r.add_post("/admin/dead-letters/redrive", self._guard(self.redrive))
        r.add_post("/admin/dead-letters/purge", self._guard(self.purge))
        r.add_post("/admin/replay", self._guard(self.replay))
        r.add_get("/admin/suppressions", self._guard(self.list_suppressions))
        r.add_post("/admin/suppressions", self._guard(self.suppress))
        r.add_post("/admin/suppressions/remove", self._guard(self.unsuppress))
        r.add_get("/admin/live", self._guard(self.live_stream))
        r.add_get("/admin/outcomes", self._guard(self.outcomes))
        r.add_post("/admin/drain", self._guard(self.drain))
        if not self.token:
            log.warning("admin API disabled: no admin.token configured")

    def _guard(self, handler: Handler) -> Handler:
        return guarded(self.token, handler)

    # -- routes -----------------------------------------------------------------

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        """Prometheus' text: the node's own figures always, the lag gauges from a
        reading waited for at most SCRAPE_WAIT (eventd/admin/scrape.py): never a 503
        nor a hang while the cluster does not answer."""
        stats = self.store.stats()
        self.metrics.outbox_bytes.set(stats.size)
        self.metrics.storage_writable.set(1 if stats.writable else 0)
        self.metrics.pending_events.set(self.store.pending_events)
        await self.scrape.refresh()  # fills the lag gauges, or says how old they are
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def runtime(self, request: web.Request) -> web.Response:
        stats = self.store.stats()
        return json_response(
            {
                "version": __version__,
                "started_at": iso_ms(int(self.started_at * 1000)),
                "uptime_seconds": round(now_ms() / 1000 - self.started_at, 3),
                "last_seq": stats.last_seq,
                "storage": {
                    "path": stats.location,
                    "writable": stats.writable,
                    "last_error": stats.last_error,
                    "file_bytes": stats.size,
                    "max_size": stats.max_size,
                },
                "dispatcher_running": self.dispatcher.running,
                "sources": sorted(self.config.sources),
                "destinations": self.dispatcher.names,
            }
        )

    async def sources(self, request: web.Request) -> web.Response:
        return json_response(
            [
                {"name": s.name, "allowed_origins": list(s.allowed_origins)}
                for s in self.config.sources.values()
            ]
        )

    async def destinations(self, request: web.Request) -> web.Response:
        return json_response(await self.destination_status())

    async def destination_status(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(s) for s in await self.dispatcher.status()]

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        q = request.query
        since = parse_time(q.get("since"), "since")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            limit = -1
        if limit < 0:
            raise BadRequest(f"limit={q.get('limit')!r}: expected a number >= 0")
        found = await self.store.dead_letters(
            destination=q.get("destination") or None, since=since, limit=min(limit, MAX_LIST)
        )
        return json_response([_dead_letter(d) for d in found])

    async def show_dead_letter(self, request: web.Request) -> web.Response:
        d = await self.store.dead_letter(int(request.match_info["id"]))
        if d is None:
            return error_response(404, "not_found", f"no dead letter {request.match_info['id']}")
        return json_response(
            {
                **_dead_letter(d),
                "received_at": iso_ms(d.received_at),
                "event": orjson.loads(d.body),
            }
        )

    async def redrive(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        ids = redrive_ids(body.get("ids"))
        n = await self.dispatcher.redrive(self._known(body.get("destination")), ids)
        return json_response({"redriven": n})

    async def purge(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        destination = self._known(body.get("destination"))
        before = parse_time(body.get("before"), "before")
        n = await self.store.purge_dead_letters(destination, before)
        log.info("dead letters purged", destination=destination, count=n)
        return json_response({"purged": n})

    async def list_suppressions(self, request: web.Request) -> web.Response:
        return json_response(await self.suppressions.list())

    async def suppress(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise BadRequest("erase: expected true or false")
        return json_response(await self.suppressions.suppress(user_id(body), erase))

    async def unsuppress(self, request: web.Request) -> web.Response:
        removed = await self.suppressions.unsuppress(user_id(await json_body(request)))
        return json_response({"removed": removed})

    async def replay(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        destination = body.get("destination")
        if not isinstance(destination, str):
            raise BadRequest("destination: expected a destination name")
        self._known(destination)
        since = parse_time(body.get("since"), "since")
        if since is None:
            raise BadRequest("since: required (an ISO-8601 time or a duration like '2h')")
        until = parse_time(body.get("until"), "until")
        found = await self.dispatcher.replay(
            destination, since, until if until is not None else now_ms()
        )
        if found is None:
            return json_response({"destination": destination, "events": 0})
        return json_response(
            {
                "destination": destination,
                "from_seq": found.first,
                "until_seq": found.last,
                "events": found.count,
            }
        )

    async def drain(self, request: web.Request) -> web.Response:
        """Answer once every destination has passed every stored event (or 504 at timeout)."""
        try:
            timeout = float(request.query.get("timeout", "60"))
        except ValueError:
            raise BadRequest("timeout: expected seconds") from None
        if not 0 < timeout < math.inf:  # NaN too: asyncio would schedule a NaN timer
            raise BadRequest("timeout: expected a positive number of seconds")
        try:
            await asyncio.wait_for(self.dispatcher.drain(), timeout)
        except TimeoutError:
            return error_response(
                504, "drain_timeout", f"destinations still behind after {timeout:g}s"
            )
        return json_response(await self.destination_status())

    async def outcomes(self, request: web.Request) -> web.Response:
        """What each running destination did with one stored event (the live debugger's
        detail; the outcomes are described in
        eventd.delivery.outcomes.RecentOutcomes.describe)."""
        source, message_id = request.query.get("source"), request.query.get("message_id")
        if not source or not message_id:
            raise BadRequest("source and message_id: both required")
        event = await self.store.find_event(source, message_id)
        seq = event.seq if event else None  # None: not stored (not committed yet, or never)
        outcomes = self.dispatcher.outcomes_of(event)
        return json_response(
            {"source": source, "message_id": message_id, "seq": seq, "destinations": outcomes}
        )

    async def live_stream(self, request: web.Request) -> web.StreamResponse:
        """Accepted (and rejected) events as they arrive: SSE, or JSON lines with ?format=json."""
        source = request.query.get("source")
        if source is not None and source not in self.config.sources:
            raise BadRequest(f"source={source!r}: no such source")
        sse = request.query.get("format") != "json"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        sub = self.live.subscribe(source)
        try:
            # Something at once, so the client sees the stream is open (headers flushed).
            await resp.write(b": connected\n\n" if sse else b"\n")
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n" if sse else b"\n")
                    continue
                try:
                    data = codec.dumps(item)
                except (TypeError, RecursionError):
                    # A rejected message nested deeper than orjson writes (it reads deeper).
                    data = orjson.dumps({**item, "message": None})
                await resp.write(b"data: " + data + b"\n\n" if sse else data + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.live.unsubscribe(sub)
        return resp

    # -- helpers ----------------------------------------------------------------

    def _known(self, destination: object) -> str | None:
        """``destination`` (None: every one) when it names a running destination."""
        if destination is None:
            return None
        if not isinstance(destination, str) or destination not in self.dispatcher.names:
            raise BadRequest(f"destination={destination!r}: no such running destination")
        return destination
