"""How the admin API answers a store's refusals (eventd/admin/api.py ``guarded``):
each as JSON ``{"code", "message"}`` with its status, the store's message kept."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from eventd.admin.api import guarded
from eventd.store import Conflict, NotSupported, StorageUnavailable


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (Conflict("dead letters [7] belong to node n1 (dl), gone for good"), 409, "conflict"),
        (NotSupported("x is not available yet"), 501, "not_implemented"),
        (StorageUnavailable("no quorum"), 503, "storage_unavailable"),
    ],
)
async def test_a_stores_refusal_is_a_json_error_with_its_status(
    raised: Exception, status: int, code: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise raised

    app = web.Application()
    app.router.add_post("/admin/x", guarded("t0ken", handler))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/admin/x", headers={"Authorization": "Bearer t0ken"})
        assert resp.status == status
        assert await resp.json() == {"code": code, "message": str(raised)}
