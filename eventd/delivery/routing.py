"""Where an event goes: a destination's ``sources``, the event's ``integrations``
object, and the destination's filters (``types``, ``events``, ``exclude_events``).

Pure functions of the event and the destination's config, so each rule is
tested alone (tests/delivery/test_routing.py). The worker calls :func:`route`
on every page it reads and on every replayed page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eventd.config import DestinationConfig
from eventd.event import Event


@dataclass(frozen=True, slots=True)
class Route:
    """What routing needs to know of one destination."""

    name: str  # its config name (always an integrations key for it)
    integration_name: str | None  # its type's integrations key ("Mixpanel"), if any
    config: DestinationConfig

    @property
    def filtering(self) -> bool:
        c = self.config
        return c.types is not None or c.events is not None or bool(c.exclude_events)


def integration_enabled(integrations: object, keys: Iterable[str | None]) -> bool:
    """Does an event's ``integrations`` object send it to the destination named by any
    of ``keys``? As analytics.js and Segment read it: the destination's own key
    decides when present (any value but ``false`` enables it, an options object
    included, with or without ``"All": false``); otherwise ``All`` (default true)."""
    if not isinstance(integrations, dict) or not integrations:
        return True
    for key in keys:
        if key is not None and key in integrations:
            return integrations[key] is not False
    return bool(integrations.get("All", True))


def routes(route: Route, event: Event) -> bool:
    """Does this event go to this destination (sources, then integrations)?"""
    sources = route.config.sources
    if sources is not None and event.source not in sources:
        return False
    if b'"integrations"' not in event.body:  # most events: routed without parsing
        return True
    return integration_enabled(
        event.message.get("integrations"), (route.name, route.integration_name)
    )


def filtered_out(config: DestinationConfig, event: Event) -> str | None:
    """Why the destination's filters (``types``, ``events``, ``exclude_events``) keep
    this event from it (the reason it is counted as skipped under), or None when
    they let it through."""
    msg = event.message
    if config.types is not None and msg.get("type") not in config.types:
        return "filtered: type"
    if msg.get("type") != "track":
        return None
    name = msg.get("event")
    if config.events is not None and name not in config.events:
        return "filtered: event not in events"
    if name in config.exclude_events:
        return "filtered: event in exclude_events"
    return None


def route(r: Route, events: Iterable[Event]) -> tuple[list[Event], list[tuple[Event, str]]]:
    """The events for this destination, and those its filters keep out (with why).
    Events routed elsewhere (sources, integrations) are in neither list."""
    routed = [e for e in events if routes(r, e)]
    if not r.filtering:
        return routed, []
    kept: list[Event] = []
    filtered: list[tuple[Event, str]] = []
    for event in routed:
        reason = filtered_out(r.config, event)
        if reason is None:
            kept.append(event)
        else:
            filtered.append((event, reason))
    return kept, filtered


def batches(events: Iterable[Event], max_events: int, max_bytes: int) -> Iterable[list[Event]]:
    """``events`` cut in order into batches of at most ``max_events`` events and
    ``max_bytes`` bytes (one event larger than ``max_bytes`` is a batch alone)."""
    batch: list[Event] = []
    size = 0
    for event in events:
        if batch and (len(batch) >= max_events or size + event.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += event.size
    if batch:
        yield batch
