"""The identity graph's state in memory: the memory store's
:class:`~eventd.store.base.IdentityBackend` (unit tests; the conformance suite in
tests/store/test_identity_conformance.py runs it beside SQLite's).

It keeps SQLite's contract (eventd/store/identity.py) over plain structures in a
:class:`MemoryIdentityData` (its "disk": a second store over the same data stands
for a restart). Profiles are kept as their JSON record and read back as fresh
objects, as a file would give them, so the graph's changes to a profile it holds
reach the store only through :meth:`MemoryIdentityStore.apply`; and ``apply``
checks a page before changing anything, so a refused page leaves nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eventd import codec
from eventd.identity.graph import ANONYMOUS, USER, Changes, Graph, Link, Profile
from eventd.identity.links import IdentityLink
from eventd.store.identity import anonymous_seqs, key_of, link_time, timeline_seqs

T = TypeVar("T")


@dataclass
class MemoryIdentityData:
    """What a :class:`MemoryIdentityStore` holds (the tables of identity.db)."""

    profiles: dict[str, bytes] = field(default_factory=dict)  # profile_id -> record JSON
    identifiers: dict[tuple[str, str], str] = field(default_factory=dict)  # -> profile_id
    # (anonymous_id or "", user_id) -> [linked_at, seq, version]
    links: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    timeline: dict[str, set[int]] = field(default_factory=dict)  # key -> seqs
    cursor: int = 0
    version: int = 0
    positions: dict[str, int] = field(default_factory=dict)


class MemoryIdentityStore:
    """The identity backend over a :class:`MemoryIdentityData`; its writer runs on a
    thread beside its readers (:attr:`in_process`)."""

    in_process = True

    def __init__(self, data: MemoryIdentityData | None = None) -> None:
        self.data = data if data is not None else MemoryIdentityData()

    # -- life cycle (nothing to open) --------------------------------------------------

    def open_writer(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def open_reader(self) -> None:
        pass

    async def close_reader(self) -> None:
        pass

    def abort_reader(self) -> None:
        pass

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    # -- the graph's backing (the writer) ----------------------------------------------

    def cursor(self) -> int:
        return self.data.cursor

    def profile_of(self, kind: str, value: str) -> str | None:
        return self.data.identifiers.get((kind, value))

    def profile(self, profile_id: str) -> Profile | None:
        body = self.data.profiles.get(profile_id)
        return None if body is None else Profile.from_record(codec.loads(body))

    def links_of(self, anonymous_id: str) -> list[Link]:
        return [
            Link(anon or None, user, linked_at, seq)
            for (anon, user), (linked_at, seq, _) in sorted(self.data.links.items())
            if anon == anonymous_id
        ]

    def prefetch(
        self, graph: Graph, ids: Iterable[tuple[str, str]], linking: Iterable[str] = ()
    ) -> None:
        found = {key: self.profile_of(*key) for key in ids}
        profiles = {pid: self.profile(pid) for pid in set(found.values()) if pid is not None}
        graph.seed(found, profiles, {anon: self.links_of(anon) for anon in linking})

    def apply(self, changes: Changes, cursor: int) -> None:
        d = self.data
        # Checked (and encoded) before anything changes: all or nothing, as a transaction.
        for link in changes.links:
            if not isinstance(link.user_id, str) or not isinstance(link.linked_at, str):
                raise ValueError(f"a link needs a userId and a linked_at: {link}")
        bodies = {pid: codec.dumps(p.record()) for pid, p in changes.profiles.items()}
        d.profiles.update(bodies)
        for pid in changes.removed - changes.profiles.keys():
            d.profiles.pop(pid, None)
        d.identifiers.update(changes.ids)
        version = d.version
        for link in changes.links:
            version += 1  # as SQLite's: a repeat of a known pair uses up a version too
            d.links.setdefault(
                (link.anonymous_id or "", link.user_id), [link.linked_at, link.seq, version]
            )
        for user in sorted(changes.resend_users):
            for key in sorted(k for k in d.links if k[1] == user):
                version += 1
                d.links[key][2] = version
        for (kind, value), seqs in changes.events.items():
            d.timeline.setdefault(key_of(kind, value), set()).update(seqs)
        d.cursor, d.version = cursor, version

    def erase(self, user_id: str) -> list[int]:
        pid = self.profile_of(USER, user_id)
        profile = None if pid is None else self.profile(pid)
        if pid is None or profile is None:
            return []
        d = self.data
        seqs = anonymous_seqs(profile, self.links_of, self._between)
        del d.profiles[pid]
        for key in [(USER, u) for u in profile.user_ids] + [
            (ANONYMOUS, a) for a in profile.anonymous_ids
        ]:
            if d.identifiers.get(key) == pid:  # a shared anonymousId may be another's now
                del d.identifiers[key]
        for key in [k for k in d.links if k[1] in profile.user_ids]:
            del d.links[key]
        for user in profile.user_ids:
            d.timeline.pop(key_of(USER, user), None)
        for anon in profile.anonymous_ids:
            d.timeline.get(key_of(ANONYMOUS, anon), set()).difference_update(seqs)
        return sorted(seqs)

    def _between(self, key: str, lo: int, hi: int) -> list[int]:
        return sorted(s for s in self.data.timeline.get(key, ()) if lo <= s < hi)

    def save_position(self, destination: str, version: int) -> None:
        self.data.positions[destination] = version

    # -- reads ---------------------------------------------------------------------------

    def find(self, kind: str, value: str) -> Profile | None:
        pid = self.profile_of(kind, value)
        return None if pid is None else self.profile(pid)

    def find_many(self, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Profile]:
        found = {key: self.find(*key) for key in set(ids)}
        return {key: p for key, p in found.items() if p is not None}

    def links(self, anonymous_ids: Iterable[str]) -> dict[str, list[Link]]:
        found = {anon: self.links_of(anon) for anon in set(anonymous_ids)}
        return {anon: links for anon, links in found.items() if links}

    def timeline(self, profile: Profile, before: int, limit: int) -> list[int]:
        def newest(key: str, lo: int, hi: int, n: int) -> list[int]:
            return self._between(key, lo, hi)[::-1][:n]

        return timeline_seqs(profile, self.links(profile.anonymous_ids), before, limit, newest)

    def links_after(self, version: int, limit: int) -> list[tuple[int, IdentityLink]]:
        rows = sorted(
            (v, anon, user, pid, linked_at)
            for (anon, user), (linked_at, _, v) in self.data.links.items()
            if v > version and (pid := self.data.identifiers.get((USER, user))) is not None
        )
        return [
            (v, IdentityLink(anon or None, user, pid, link_time(linked_at)))
            for v, anon, user, pid, linked_at in rows[:limit]
        ]

    def position(self, destination: str) -> int:
        return self.data.positions.get(destination, 0)

    def counts(self) -> dict[str, int]:
        d = self.data
        return {
            "profiles": len(d.profiles),
            "identifiers": len(d.identifiers),
            "links": len(d.links),
        }
