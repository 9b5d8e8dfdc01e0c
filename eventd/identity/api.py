"""The profile API: ``GET /admin/profiles/{id}`` and ``GET /admin/profiles/{id}/events``.

Behind the admin bearer token like every /admin route. ``id`` is a userId or an
anonymousId (the userId is tried first; ``?kind=user_id|anonymous_id`` forces one).
503 ``identity_unavailable`` while the graph has not opened identity.db (a full disk).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from eventd.admin import BadRequest, error_response, guarded, json_response
from eventd.app import RUNTIME
from eventd.identity.graph import ANONYMOUS, USER, Profile
from eventd.identity.service import IdentityService, IdentityUnavailable
from eventd.store import iso_ms

KINDS = {"user_id": USER, "anonymous_id": ANONYMOUS}
MAX_LIMIT = 1000
SQL_INT_MAX = 2**63 - 1


def add_routes(app: web.Application, token: str | None) -> None:
    app.router.add_get("/admin/profiles/{id}", guarded(token, show))
    app.router.add_get("/admin/profiles/{id}/events", guarded(token, events))


def _service(request: web.Request) -> IdentityService | None:
    services = request.app[RUNTIME].services
    return next((s for s in services if isinstance(s, IdentityService)), None)


async def _profile(request: web.Request) -> tuple[IdentityService, Profile] | web.Response:
    service = _service(request)
    if service is None:
        return error_response(
            404, "identity_disabled", "the identity graph is off: set identity.enabled"
        )
    kind_name = request.query.get("kind")
    if kind_name is not None and kind_name not in KINDS:
        raise BadRequest(f"kind={kind_name!r}: expected 'user_id' or 'anonymous_id'")
    id = request.match_info["id"]
    try:
        profile = await service.find(id, KINDS[kind_name] if kind_name else None)
    except IdentityUnavailable as exc:
        # identity.db cannot open yet (a full disk): the graph retries in the background.
        return error_response(503, "identity_unavailable", str(exc))
    if profile is None:
        what = f"{kind_name} {id!r}" if kind_name else f"userId or anonymousId {id!r}"
        return error_response(404, "not_found", f"no profile has the {what}")
    return service, profile


async def show(request: web.Request) -> web.Response:
    found = await _profile(request)
    if isinstance(found, web.Response):
        return found
    return json_response(found[1].public())


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={raw!r}: expected an integer from {lo} to {hi}")
    return value


async def events(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    before = _int(request, "before", None, 1, SQL_INT_MAX)
    assert limit is not None
    found = await _profile(request)
    if isinstance(found, web.Response):
        return found
    service, profile = found
    stored = await service.timeline(profile, before, limit)
    listed: list[dict[str, Any]] = [
        {
            "seq": e.seq,
            "source": e.source,
            "received_at": iso_ms(e.received_at),
            "event": e.message,
        }
        for e in stored
    ]
    return json_response(
        {
            "profile_id": profile.profile_id,
            "events": listed,
            "next_before": listed[-1]["seq"] if len(listed) == limit else None,
        }
    )
