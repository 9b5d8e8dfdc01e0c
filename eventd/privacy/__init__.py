"""Privacy: erasures forwarded to every destination, and their status.

A feature plugin (the ``eventd.plugins`` entry-point group): the ``privacy``
service (:mod:`.erasures`) and ``GET /admin/suppressions/{user_id}``, the
suppression with its deletion status per destination (``eventd suppressions
show USER_ID`` prints it).

It needs a store that keeps forwarded erasures (:class:`eventd.store.DeletionStore`:
SQLite, memory, the JetStream cluster); on another, eventd erases only its own copy and
``GET /admin/suppressions/{user_id}`` answers 501 saying so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import web

from eventd.admin import BadRequest, guarded
from eventd.hookspecs import Service, hookimpl
from eventd.store import DeletionStore

from .erasures import Erasures

if TYPE_CHECKING:
    from eventd.app import Runtime

log = structlog.get_logger("eventd.privacy")

MAX_WAIT = 300.0


@hookimpl
def eventd_services(runtime: Runtime) -> list[Service]:
    if not isinstance(runtime.store, DeletionStore):
        log.warning(
            "erasures are not forwarded to destinations: the storage backend keeps no"
            " deletion requests",
            store=type(runtime.store).__name__,
        )
        return []
    return [Erasures(runtime, runtime.store)]


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    async def show(request: web.Request) -> web.Response:
        """The suppression of ``user_id`` with ``deletions``: one entry per destination
        (see Erasures.status); ``?wait=S`` answers once none is still requested."""
        user_id = request.match_info["user_id"]
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            raise BadRequest("wait: expected seconds") from None
        if not 0 <= wait <= MAX_WAIT or math.isnan(wait):
            raise BadRequest(f"wait: expected seconds from 0 to {MAX_WAIT:g}")
        record = await runtime.suppressions.get(user_id)
        if record is None:
            body = {"code": "not_found", "message": f"user_id={user_id!r} is not suppressed"}
            return web.json_response(body, status=404)
        erasures = next((s for s in runtime.services if isinstance(s, Erasures)), None)
        if erasures is None:
            body = {
                "code": "not_supported",
                "message": "the storage backend keeps no deletion requests: erasures are"
                " not forwarded to destinations",
            }
            return web.json_response(body, status=501)
        record["deletions"] = await erasures.status(user_id, wait)
        return web.Response(body=orjson.dumps(record), content_type="application/json")

    app.router.add_get("/admin/suppressions/{user_id}", guarded(runtime.config.admin.token, show))
