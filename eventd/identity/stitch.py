"""Stitched delivery: events as a destination with ``resolve_identity`` or
``enrich_traits`` should get them. The stored event never changes.

- ``resolve_identity``: an event with only an anonymousId (or a blocked userId)
  already linked to a user is delivered with that userId: the user of the latest
  link made *before* the event in the log (links.py's rule, by log order), so the
  answer depends only on the log, never on how far the graph has got.
- ``enrich_traits``: those traits of the event's profile (its userId's, the
  resolved one's, or its anonymousId's) are copied into ``context.traits``; the
  event's own ``context.traits`` win (they are what the app said at the time).

No race: the batch waits until the graph has applied the log up to its last
event, so an anonymous event stored after the identify that links its
anonymousId is always delivered resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventd.config import DestinationConfig
from eventd.event import Event
from eventd.identity.graph import ANONYMOUS, USER, Link, Profile, owner_at

if TYPE_CHECKING:
    from eventd.identity.service import IdentityService


class Stitcher:
    """The dispatcher's ``stitch`` call (eventd/delivery/worker.py: Worker.settle)."""

    def __init__(self, service: IdentityService) -> None:
        self.service = service

    async def __call__(self, config: DestinationConfig, batch: list[Event]) -> list[Event] | None:
        if not batch:
            return batch
        if not await self.service.wait_past(max(e.seq for e in batch)):
            return None
        store = self.service.store
        return await store.read(self._stitch, config, batch)

    def _stitch(self, config: DestinationConfig, batch: list[Event]) -> list[Event]:
        """On the identity reader thread: reads links and profiles, builds the events."""
        usable = self.service.rules.usable
        store = self.service.store
        ids = [
            (usable(e.message.get("userId")), usable(e.message.get("anonymousId"))) for e in batch
        ]
        links: dict[str, list[Link]] = {}
        if config.resolve_identity:
            links = store.links(a for u, a in ids if u is None and a is not None)
        resolved: list[str | None] = []
        for e, (user, anon) in zip(batch, ids, strict=True):
            if user is None and anon is not None and config.resolve_identity:
                owner = owner_at(links.get(anon, ()), e.seq)
                user = owner.user_id if owner is not None else None
            resolved.append(user)
        profiles: dict[tuple[str, str], Profile] = {}
        if config.enrich_traits:
            profiles = store.find_many(
                _identifier(u, a) for u, (_, a) in zip(resolved, ids, strict=True) if u or a
            )
        out = []
        for e, user, (original, anon) in zip(batch, resolved, ids, strict=True):
            traits: dict[str, Any] = {}
            if config.enrich_traits and (user or anon):
                profile = profiles.get(_identifier(user, anon))
                if profile is not None:
                    traits = {
                        k: profile.traits[k][0] for k in config.enrich_traits if k in profile.traits
                    }
            if user == original and not traits:
                out.append(e)
                continue
            msg = dict(e.message)
            if user != original and user is not None:
                msg["userId"] = user
            if traits:
                context = dict(msg.get("context") or {})
                own = context.get("traits")
                context["traits"] = {**traits, **own} if isinstance(own, dict) else traits
                msg["context"] = context
            out.append(Event(e.seq, e.source, e.received_at, msg, user_id=user or e.user_id))
        return out


def _identifier(user: str | None, anon: str | None) -> tuple[str, str]:
    return (USER, user) if user is not None else (ANONYMOUS, anon or "")
