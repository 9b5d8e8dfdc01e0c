"""The admin HTTP API (``/admin/*``) and ``/metrics``, behind the admin bearer token.

Reads go through the admin's own read connection; changes (redrive, purge,
replay, suppressions) are writes through the outbox's writer, after which the
destination's worker is woken. The CLI's daemon verbs are thin clients of these routes.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import orjson
import structlog
from aiohttp import web

from eventd import __version__
from eventd.config import Config, parse_duration
from eventd.dispatcher import Dispatcher
from eventd.live import LiveHub
from eventd.metrics import CONTENT_TYPE_LATEST, Metrics
from eventd.outbox import Outbox, StorageUnavailable, fetch, iso_ms, now_ms
from eventd.suppressions import Suppressions

log = structlog.get_logger("eventd.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# SQLite's INTEGER range: a bigger Python int cannot be bound as a parameter.
SQL_INT_MAX = 2**63 - 1
# Ids per redrive request: keeps the IN (...) list under SQLite's variable limit.
MAX_REDRIVE_IDS = 10000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"code": code, "message": message}, status)


class BadRequest(Exception):
    pass


def parse_time(value: object, name: str) -> int | None:
    """An ISO-8601 time or a duration ago ('2h', '7d', or seconds) -> unix ms."""
    if value is None or value == "":
        return None
    expected = f"{name}={value!r}: expected an ISO-8601 time or a duration like '2h'"
    try:
        ms = now_ms() - parse_duration(value) * 1000
    except ValueError:
        if not isinstance(value, str):
            raise BadRequest(expected) from None
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(expected) from None
        ms = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000
    if not -SQL_INT_MAX <= ms <= SQL_INT_MAX:  # a huge duration: -inf, or past int64
        raise BadRequest(f"{name}={value!r}: out of range")
    return int(ms)


async def authorized(
    token: str | None, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """The bearer-token check and the admin API's error bodies (BadRequest: 400,
    StorageUnavailable: 503)."""
    if not token:
        return _error(403, "admin_disabled", "the admin API is off: set admin.token")
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return _error(401, "unauthorized", "send Authorization: Bearer <admin.token>")
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, "bad_request", str(exc))
    except StorageUnavailable as exc:
        resp = _error(503, "storage_unavailable", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp


def guard(token: str | None, handler: Handler) -> Handler:
    """``handler`` behind the admin token: what features' ``/admin/*`` routes use too."""

    async def route(request: web.Request) -> web.StreamResponse:
        return await authorized(token, request, handler)

    return route


class Admin:
    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        dispatcher: Dispatcher,
        metrics: Metrics,
        live: LiveHub,
        suppressions: Suppressions,
        started_at: float,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.live = live
        self.suppressions = suppressions
        self.started_at = started_at
        self.token = config.admin.token
        self._reader: aiosqlite.Connection | None = None

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
        r.add_post("/admin/drain", self._guard(self.drain))
        if not self.token:
            log.warning("admin API disabled: no admin.token configured")

    async def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            self._reader = await self.outbox.reader()
        return self._reader

    def _guard(self, handler: Handler) -> Handler:
        return guard(self.token, handler)

    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await authorized(self.token, request, handler)

    # -- routes -----------------------------------------------------------------

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.outbox_bytes.set(self.outbox.file_bytes())
        self.metrics.pending_events.set(self.outbox.pending_events)
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def runtime(self, request: web.Request) -> web.Response:
        return _json(
            {
                "version": __version__,
                "started_at": iso_ms(int(self.started_at * 1000)),
                "uptime_seconds": round(now_ms() / 1000 - self.started_at, 3),
                "last_seq": self.outbox.last_seq,
                "storage": {
                    "path": str(self.outbox.path),
                    "writable": self.outbox.writable,
                    "last_error": self.outbox.last_error,
                    "file_bytes": self.outbox.file_bytes(),
                    "max_size": self.outbox.max_size,
                },
                "dispatcher_running": self.dispatcher.running,
                "sources": sorted(self.config.sources),
                "destinations": sorted(self.dispatcher.workers),
            }
        )

    async def sources(self, request: web.Request) -> web.Response:
        return _json(
            [
                {"name": s.name, "allowed_origins": list(s.allowed_origins)}
                for s in self.config.sources.values()
            ]
        )

    async def destinations(self, request: web.Request) -> web.Response:
        return _json(await self.destination_status())

    async def destination_status(self) -> list[dict[str, Any]]:
        db = await self.reader()
        dead = dict(
            await fetch(
                db, "SELECT destination, count(*) FROM dead_letters WHERE state = 'dead' GROUP BY 1"
            )
        )
        out = []
        now = now_ms()
        for name, w in sorted(self.dispatcher.workers.items()):
            rows = await fetch(
                db, "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (w.cursor,)
            )
            oldest = rows[0][0] if rows else None
            out.append(
                {
                    "name": name,
                    "type": w.config.type,
                    "cursor": w.cursor,
                    "lag_events": max(0, self.outbox.last_seq - w.cursor),
                    "lag_seconds": round(max(0, now - oldest) / 1000, 3) if oldest else 0.0,
                    "delivered": w.delivered,
                    "skipped": w.skipped,
                    "retrying": w.retrying,
                    "dead": dead.get(name, 0),
                    "last_error": w.last_error,
                    "rate_limit": w.config.rate_limit,
                    "max_in_flight": w.config.max_in_flight,
                }
            )
        return out

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        q = request.query
        where, args = self._dead_filter(
            q.get("destination"), "failed_at >= ?", parse_time(q.get("since"), "since")
        )
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            limit = -1
        if limit < 0:  # SQLite reads a negative LIMIT as none at all
            raise BadRequest(f"limit={q.get('limit')!r}: expected a number >= 0")
        limit = min(limit, 10000)
        db = await self.reader()
        rows = await fetch(
            db,
            "SELECT id, destination, seq, source, message_id, attempts, error, failed_at, state"
            f" FROM dead_letters {where} ORDER BY id LIMIT ?",
            (*args, limit),
        )
        keys = (
            "id",
            "destination",
            "seq",
            "source",
            "message_id",
            "attempts",
            "error",
            "failed_at",
            "state",
        )
        items = [dict(zip(keys, r, strict=True)) for r in rows]
        for item in items:
            item["failed_at"] = iso_ms(item["failed_at"])
        return _json(items)

    async def show_dead_letter(self, request: web.Request) -> web.Response:
        dead_id = int(request.match_info["id"])
        db = await self.reader()
        rows = (
            await fetch(
                db,
                "SELECT id, destination, seq, source, message_id, attempts, error, failed_at,"
                " state, received_at, body FROM dead_letters WHERE id = ?",
                (dead_id,),
            )
            if dead_id <= SQL_INT_MAX
            else []
        )
        if not rows:
            return _error(404, "not_found", f"no dead letter {request.match_info['id']}")
        r = rows[0]
        return _json(
            {
                "id": r[0],
                "destination": r[1],
                "seq": r[2],
                "source": r[3],
                "message_id": r[4],
                "attempts": r[5],
                "error": r[6],
                "failed_at": iso_ms(r[7]),
                "state": r[8],
                "received_at": iso_ms(r[9]),
                "event": orjson.loads(r[10]),
            }
        )

    async def redrive(self, request: web.Request) -> web.Response:
        body = await _body(request)
        destination = body.get("destination")
        ids = body.get("ids") or []
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= SQL_INT_MAX for i in ids
        ):
            raise BadRequest("ids: expected a list of dead-letter ids")
        if len(ids) > MAX_REDRIVE_IDS:
            raise BadRequest(f"ids: at most {MAX_REDRIVE_IDS} per request")
        self._known(destination)
        where, args = self._dead_filter(destination, None, None)
        where += " AND state = 'dead'" if where else "WHERE state = 'dead'"
        if ids:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            args = [*args, *ids]
        n = await self.outbox.execute(f"UPDATE dead_letters SET state = 'redrive' {where}", [args])
        for w in self.dispatcher.workers.values():
            w.wake()
        log.info("dead letters redriven", destination=destination, count=n)
        return _json({"redriven": n})

    async def purge(self, request: web.Request) -> web.Response:
        body = await _body(request)
        destination = body.get("destination")
        self._known(destination)
        where, args = self._dead_filter(
            destination, "failed_at < ?", parse_time(body.get("before"), "before")
        )
        n = await self.outbox.execute(f"DELETE FROM dead_letters {where}", [args])
        log.info("dead letters purged", destination=destination, count=n)
        return _json({"purged": n})

    async def list_suppressions(self, request: web.Request) -> web.Response:
        return _json(await self.suppressions.list())

    async def suppress(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user_id = _user_id(body)
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise BadRequest("erase: expected true or false")
        return _json(await self.suppressions.suppress(user_id, erase))

    async def unsuppress(self, request: web.Request) -> web.Response:
        removed = await self.suppressions.unsuppress(_user_id(await _body(request)))
        return _json({"removed": removed})

    async def replay(self, request: web.Request) -> web.Response:
        body = await _body(request)
        destination = body.get("destination")
        if not isinstance(destination, str):
            raise BadRequest("destination: expected a destination name")
        worker = self._known(destination)
        assert worker is not None
        since = parse_time(body.get("since"), "since")
        if since is None:
            raise BadRequest("since: required (an ISO-8601 time or a duration like '2h')")
        until = parse_time(body.get("until"), "until")
        db = await self.reader()
        # received_at follows seq closely (stamped at receipt, committed in order)
        rows = await fetch(
            db,
            "SELECT min(seq), max(seq), count(*) FROM events WHERE received_at >= ?"
            " AND received_at <= ?",
            (since, until if until is not None else now_ms()),
        )
        first, last, count = rows[0]
        if not count:
            return _json({"destination": destination, "events": 0})
        await self.outbox.execute(
            "INSERT INTO replays (destination, next_seq, until_seq, created_at) VALUES (?,?,?,?)",
            [(destination, first, last, now_ms())],
        )
        worker.wake()
        log.info("replay queued", destination=destination, from_seq=first, until_seq=last)
        return _json(
            {"destination": destination, "from_seq": first, "until_seq": last, "events": count}
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
            return _error(504, "drain_timeout", f"destinations still behind after {timeout:g}s")
        return _json(await self.destination_status())

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
                    data = orjson.dumps(item)
                except orjson.JSONEncodeError:
                    # A rejected message nested deeper than orjson writes (it reads deeper).
                    data = orjson.dumps({**item, "message": None})
                await resp.write(b"data: " + data + b"\n\n" if sse else data + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.live.unsubscribe(sub)
        return resp

    # -- helpers ----------------------------------------------------------------

    def _known(self, destination: object) -> Any:
        if destination is None:
            return None
        if not isinstance(destination, str) or destination not in self.dispatcher.workers:
            raise BadRequest(f"destination={destination!r}: no such running destination")
        return self.dispatcher.workers[destination]

    @staticmethod
    def _dead_filter(
        destination: str | None, time_clause: str | None, time_value: int | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if destination:
            clauses.append("destination = ?")
            args.append(destination)
        if time_clause and time_value is not None:
            clauses.append(time_clause)
            args.append(time_value)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _user_id(body: dict[str, Any]) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise BadRequest("user_id: expected the userId, a non-empty string")
    return user_id


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body: expected a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    return body
