"""Cloud-app sources over HTTP: ``POST /v1/webhooks/{write_key}`` into the message pipeline.

Owns what a notification request contributes: which source its URL's write key
names (apps that send webhooks cannot set Basic auth), the signature check, the
mapping by the source's type (eventd/source.py), and the answer the sender
expects. The messages then go through the Tracking API's own pipeline
(:meth:`eventd.ingest.Ingest.accept`: tracking plan, suppression, commit, live
stream, metrics), so everything downstream is unchanged.

Answers (senders retry anything but a 2xx, for hours or days)::

    200 {"success": true, "events": N}  stored (committed) or, for a provider's
                                        retry, already stored (its event id is the
                                        messageId); N = 0: a topic eventd does not
                                        map, acknowledged and counted as ignored
    401 invalid_signature               the body is not signed with the source's secret
    400 invalid_json                    a signed body that is not JSON
    404 unknown_write_key               no cloud-app source has this key
    500 mapping_failed                  the mapper raised: not acknowledged, so the
                                        sender retries once the mapper is fixed
    429 / 503                           as the Tracking API (overloaded, storage down)

Every notification is counted in ``eventd_webhook_notifications_total{source,
outcome}`` (stored, ignored, rejected, suppressed, invalid_signature, invalid_json,
mapping_failed).
This module is a feature plugin (``eventd.plugins`` entry point): it adds its route
through the ``eventd_routes`` hook, as a third-party feature would.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import web
from prometheus_client import Counter

from eventd.config import SourceConfig
from eventd.hookspecs import hookimpl
from eventd.ingest import ApiError, Ingest
from eventd.normalize import Envelope
from eventd.plugins import check_sources, source_types
from eventd.source import Source

if TYPE_CHECKING:
    from eventd.app import Runtime

log = structlog.get_logger("eventd.webhooks")

PATH = "/v1/webhooks/{write_key}"


class Webhooks:
    """The handler of one app: its cloud-app sources by write key."""

    def __init__(self, runtime: Runtime, sources: dict[str, Source]) -> None:
        config = runtime.config
        self.ingest = Ingest(
            config, runtime.store, runtime.metrics, runtime.live, runtime.suppressions.user_ids
        )
        self.by_key: dict[str, tuple[SourceConfig, Source]] = {
            key: (src, sources[src.name])
            for key, src in config.source_by_key(None).items()
            if src.name in sources
        }
        self.notifications = Counter(
            "eventd_webhook_notifications",
            "Cloud-app source notifications (POST /v1/webhooks/{write_key}) by source and"
            " outcome: stored, ignored (maps to nothing), rejected (no message valid),"
            " suppressed (every user suppressed), invalid_signature, invalid_json,"
            " mapping_failed",
            ["source", "outcome"],
            registry=runtime.metrics.registry,
        )

    def add_routes(self, app: web.Application) -> None:
        # Ingest's wrapper: the same JSON error bodies, rejected counts and request
        # latency (labelled by route, never by write key) as the Tracking API.
        app.router.add_post(
            PATH, functools.partial(self.ingest.cors_and_errors, handler=self.handle)
        )

    async def handle(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC)
        found = self.by_key.get(request.match_info["write_key"])
        if found is None:
            raise ApiError(404, "unknown_write_key", "no cloud-app source has this write key")
        config, source = found
        body = await request.read()
        if not source.verify(request.headers, body):
            self._count(config, "invalid_signature")
            raise ApiError(
                401,
                "invalid_signature",
                f"the request is not signed with sources.{config.name}'s secret "
                f"(type {config.type!r})",
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self._count(config, "invalid_json")
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
        del body
        try:
            messages = source.map(payload)
        except Exception as exc:
            # A mapper's bug must not lose the notification: unacknowledged, the
            # sender retries it.
            log.exception("webhook mapping failed", source=config.name, type=config.type)
            self._count(config, "mapping_failed")
            raise ApiError(
                500, "mapping_failed", f"sources.{config.name} could not map the body: {exc!r}"
            ) from exc
        if not messages:
            self._count(config, "ignored")
            return _answer(0)
        # No context.ip from the peer: it is the provider's server, not the user.
        stored, errors = await self.ingest.accept(
            config, list(messages), Envelope(received_at=received_at)
        )
        self._count(config, "stored" if stored else "rejected" if errors else "suppressed")
        response = _answer(len(messages) - len(errors))
        if errors:
            response.headers["X-Eventd-Rejected"] = str(len(errors))
        return response

    def _count(self, source: SourceConfig, outcome: str) -> None:
        self.notifications.labels(source.name, outcome).inc()


def _answer(events: int) -> web.Response:
    return web.Response(
        body=orjson.dumps({"success": True, "events": events}), content_type="application/json"
    )


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    """Validate every cloud-app source's settings (a ConfigError stops the start) and
    serve ``POST /v1/webhooks/{write_key}``."""
    Webhooks(runtime, check_sources(runtime.config, source_types())).add_routes(app)
