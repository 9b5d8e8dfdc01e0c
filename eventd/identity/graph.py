"""The identity graph's merge rules: pure logic over profiles, no I/O.

A :class:`Graph` takes stored events in log order (:meth:`Graph.apply`) and keeps
who is who: which userIds and anonymousIds make one person (a profile), and that
person's traits and counters. It reads what it does not hold through a
:class:`Backing` (the identity store, or nothing in tests) and hands back what
changed (:meth:`Graph.take_changes`) for the store to write in one transaction.

Rules (issue 15; the attribution rule is the one in :mod:`eventd.identity.links`):

- A link is asked for by an event carrying both a userId and an anonymousId (any
  type, identify above all) and by ``alias`` (previousId -> userId).
- Blocked values (``[identity] blocked_values``, compared case-insensitively after
  trimming: "null", "undefined", "0", ...) never link anything: such an id is
  treated as absent, and a link asked for with one is refused (``blocked_value``).
- Two different userIds never merge through a shared anonymousId (a shared
  laptop): the anonymousId's history before the first sign-in belongs to the first
  user; once another user signs in on it, it is linked to that user too and its new
  anonymous events go to them; the merge is refused (``shared_anonymous_id``).
- Only ``alias`` merges two userIds' profiles. An alias whose previousId is no known
  userId is read as an anonymousId (analytics.js sends its anonymousId there).
- A profile takes at most ``max_anonymous_ids`` anonymousIds; a further one is not
  linked (``max_anonymous_ids``), and its events stay on its own anonymous profile.
- Refusals are counted per event that asked for the refused link.

Profiles: traits merge identify traits and every event's ``context.traits``, the
latest event timestamp winning per trait; ``revenue`` sums ``properties.revenue``
of track events; timestamps are the normalized ``timestamp`` (ISO-8601 UTC with
milliseconds, as normalize.py writes it, so they compare as strings).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from eventd.identity.message import Message

DEFAULT_BLOCKED_VALUES: tuple[str, ...] = (
    "",
    "null",
    "undefined",
    "0",
    "-1",
    "nil",
    "none",
    "anonymous",
    "guest",
    "unknown",
    "[object Object]",
)
DEFAULT_MAX_ANONYMOUS_IDS = 100

BLOCKED_VALUE = "blocked_value"
SHARED_ANONYMOUS_ID = "shared_anonymous_id"
MAX_ANONYMOUS_IDS = "max_anonymous_ids"
REFUSAL_REASONS = (BLOCKED_VALUE, MAX_ANONYMOUS_IDS, SHARED_ANONYMOUS_ID)

# A revenue's types, as a tuple: ``int | float`` in isinstance builds the union on each
# call (this runs once per track event).
_NUMBER = (int, float)
_MISSING: Any = object()  # not cached (None is cached: "the store has none")
USER = "u"  # identifier kinds, as the store keeps them
ANONYMOUS = "a"


@dataclass(frozen=True, slots=True)
class Rules:
    """The ``[identity]`` merge protection."""

    blocked_values: frozenset[str] = frozenset(v.strip().lower() for v in DEFAULT_BLOCKED_VALUES)
    max_anonymous_ids: int = DEFAULT_MAX_ANONYMOUS_IDS
    longest: int = field(init=False, default=0)  # of the blocked values

    def __post_init__(self) -> None:
        object.__setattr__(self, "longest", max(map(len, self.blocked_values), default=0))

    @classmethod
    def of(cls, blocked_values: Iterable[str], max_anonymous_ids: int) -> Rules:
        return cls(frozenset(v.strip().lower() for v in blocked_values), max_anonymous_ids)

    def usable(self, value: object) -> str | None:
        """``value`` as an id, or None when absent or blocked."""
        if not isinstance(value, str):
            return None
        # Most ids (UUIDs, database ids) are longer than any blocked value and untrimmed:
        # they skip the strip and lower (this runs 4 times per event).
        if len(value) > self.longest and not value[0].isspace() and not value[-1].isspace():
            return value
        return None if value.strip().lower() in self.blocked_values else value


class Link(NamedTuple):
    """anonymousId -> userId, made by the event at ``seq`` (``linked_at``: its timestamp).

    ``anonymous_id`` is None on the row recording a userId's membership of its profile.
    Immutable. A NamedTuple, not a frozen dataclass: that one's __init__ sets each
    field through ``object.__setattr__`` (callgrind: 7,700 against 3,700 instructions
    per link made or read).
    """

    anonymous_id: str | None
    user_id: str
    linked_at: str
    seq: int


def owner_at(links: Iterable[Link], seq: int) -> Link | None:
    """The link an anonymous-only event at ``seq`` belongs to (links.py's rule, by log
    order): the latest link made before it; None when none was made before it."""
    best: Link | None = None
    for link in links:
        if link.seq < seq and (best is None or link.seq > best.seq):
            best = link
    return best


def anonymous_ranges(links: Iterable[Link], user_ids: Iterable[str]) -> list[tuple[int, int]]:
    """The seq ranges [lo, hi) in which an anonymousId's anonymous-only events belong
    to a profile with ``user_ids``, from that anonymousId's links (links.py's rule:
    before its first link, to the first user; then to the latest user linked)."""
    ordered = sorted((x for x in links if x.anonymous_id is not None), key=lambda x: x.seq)
    mine = set(user_ids)
    ranges: list[tuple[int, int]] = []
    for i, link in enumerate(ordered):
        if link.user_id not in mine:
            continue
        lo = 0 if i == 0 else link.seq
        hi = ordered[i + 1].seq if i + 1 < len(ordered) else 2**63 - 1
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


_allocate = object.__new__  # a Profile with no field set (Graph._new_profile sets them)

# A new profile's id hashes from a copy of this empty one: making a blake2b object parses
# its keyword arguments and sets up its parameter block, a copy only copies the state
# (callgrind: 9,400 -> 8,200 instructions per id, two ids per new person).
_PROFILE_HASH = hashlib.blake2b(digest_size=10)


def profile_id_for(kind: str, value: str) -> str:
    """A profile's id, from the identifier that created it: the same log builds the same ids."""
    h = _PROFILE_HASH.copy()
    h.update(f"{kind}:{value}".encode())
    return "prof_" + h.hexdigest()


@dataclass(slots=True)
class Profile:
    """One person. ``traits`` keep each value with the timestamp that set it."""

    profile_id: str
    created_seq: int
    user_ids: list[str] = field(default_factory=list)
    anonymous_ids: list[str] = field(default_factory=list)
    traits: dict[str, list[Any]] = field(default_factory=dict)  # name -> [value, timestamp]
    first_seen: str | None = None
    last_seen: str | None = None
    event_count: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    revenue: float = 0
    groups: list[str] = field(default_factory=list)
    # The store's own key for the profile's row (identity.db: ``profiles.key``, an integer
    # in creation order), 0 until stored; a backend without one leaves it 0. Not part of
    # the profile (record, public, equality): the same profile has another key elsewhere.
    key: int = field(default=0, compare=False, repr=False)

    def public(self) -> dict[str, Any]:
        """The profile as the API shows it (DESIGN.md: profile JSON keys)."""
        return {
            "profile_id": self.profile_id,
            "user_ids": list(self.user_ids),
            "anonymous_ids": list(self.anonymous_ids),
            "traits": {k: v[0] for k, v in self.traits.items()},
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "event_count": self.event_count,
            "events_by_type": dict(self.events_by_type),
            "revenue": round(self.revenue, 6),
            "groups": list(self.groups),
        }

    def record(self) -> dict[str, Any]:
        """Everything, for the store (:meth:`from_record` reads it back)."""
        return {
            "profile_id": self.profile_id,
            "created_seq": self.created_seq,
            "user_ids": self.user_ids,
            "anonymous_ids": self.anonymous_ids,
            "traits": self.traits,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "event_count": self.event_count,
            "events_by_type": self.events_by_type,
            "revenue": self.revenue,
            "groups": self.groups,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Profile:
        return cls(**r)

    def absorb(self, other: Profile) -> None:
        """Take ``other``'s ids, traits (latest wins) and counters.

        The usual ``other`` is a visitor's anonymous profile at sign-in: no userIds, no
        groups; a list comprehension is a call, so an empty list skips its own, and
        the earliest and latest timestamps are compared here, not in two calls (an
        absent one loses)."""
        if other.user_ids:
            self.user_ids += [u for u in other.user_ids if u not in self.user_ids]
        self.anonymous_ids += [a for a in other.anonymous_ids if a not in self.anonymous_ids]
        for name, (value, ts) in other.traits.items():
            mine = self.traits.get(name)
            if mine is None or (ts or "") > (mine[1] or ""):
                self.traits[name] = [value, ts]
        first, last = other.first_seen, other.last_seen
        if first is not None and (self.first_seen is None or first < self.first_seen):
            self.first_seen = first
        if last is not None and (self.last_seen is None or last > self.last_seen):
            self.last_seen = last
        self.event_count += other.event_count
        for t, n in other.events_by_type.items():
            self.events_by_type[t] = self.events_by_type.get(t, 0) + n
        self.revenue += other.revenue
        if other.groups:
            self.groups += [g for g in other.groups if g not in self.groups]

    def count(self, msgs: Sequence[Message]) -> None:
        """Add events (in log order) to the counters and traits. One call per run of a
        person's events: the attribute reads and writes happen once per run, not per event.

        Tracks (most events) are counted in a local and added to ``events_by_type`` once,
        at the place the first one took in it (its keys keep first-seen order); the
        earliest and latest timestamps take one comparison per event: a stored profile's
        ``first_seen <= last_seen``, both set or both None (only this and
        :meth:`absorb` set them, together)."""
        by_type = self.events_by_type
        first, last = self.first_seen, self.last_seen
        revenue = self.revenue
        tracks = 0
        for msg in msgs:
            ts = msg.timestamp
            if not isinstance(ts, str) or not ts:
                ts = None
            elif last is None or first is None:
                first = ts if first is None or ts < first else first
                last = ts if last is None or ts > last else last
            elif ts > last:
                last = ts
            elif ts < first:
                first = ts
            context = msg.context
            if context is not None and context.traits is not None:  # most events send none
                self._traits(context.traits, ts)
            kind = msg.type
            if kind == "track":
                if not tracks and "track" not in by_type:
                    by_type["track"] = 0  # its place among the types, counted below
                tracks += 1
                props = msg.properties
                if props is not None:
                    value = props.revenue
                    if (
                        value is not None
                        and isinstance(value, _NUMBER)
                        and not isinstance(value, bool)
                    ):
                        revenue += value
            elif isinstance(kind, str):
                by_type[kind] = by_type.get(kind, 0) + 1
                if kind == "identify":
                    self._traits(msg.traits, ts)
                elif kind == "group":
                    group = msg.groupId
                    if isinstance(group, str) and group not in self.groups:
                        self.groups.append(group)
        if tracks:
            by_type["track"] += tracks
        self.event_count += len(msgs)
        self.first_seen, self.last_seen = first, last
        self.revenue = revenue

    def _traits(self, traits: object, ts: str | None) -> None:
        if not isinstance(traits, dict):
            return
        for name, value in traits.items():
            mine = self.traits.get(name)
            # Ties go to the later event in the log: it is the newer statement.
            if mine is None or (ts or "") >= (mine[1] or ""):
                self.traits[name] = [value, ts]


class Backing(Protocol):
    """What the graph does not hold yet: the store's current state."""

    def profile_of(self, kind: str, value: str) -> str | None:
        """The profile an identifier points at (an anonymousId: its current owner)."""

    def profile(self, profile_id: str) -> Profile | None: ...

    def links_of(self, anonymous_id: str) -> list[Link]: ...


class Empty:
    """A backing with nothing in it (a new graph; the unit tests)."""

    def profile_of(self, kind: str, value: str) -> str | None:
        return None

    def profile(self, profile_id: str) -> Profile | None:
        return None

    def links_of(self, anonymous_id: str) -> list[Link]:
        return []


@dataclass
class Changes:
    """What :meth:`Graph.apply` changed since the last :meth:`Graph.take_changes`."""

    profiles: dict[str, Profile] = field(default_factory=dict)  # to upsert
    removed: set[str] = field(default_factory=set)  # merged away
    # Made since the last take_changes: the store never held them, so one of them merged
    # away since has nothing to delete (most anonymous profiles of a page, merged into
    # their user's profile at sign-in).
    created: set[str] = field(default_factory=set)
    # The store keys (Profile.key) of the removed profiles that had one: a backend keyed
    # by them deletes those rows (a profile merged away is no longer in the graph's hands).
    removed_keys: dict[str, int] = field(default_factory=dict)
    ids: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, value) -> profile_id
    links: list[Link] = field(default_factory=list)  # new links
    resend_users: set[str] = field(default_factory=set)  # their links changed profile_id
    refused: Counter[str] = field(default_factory=Counter)  # reason -> links refused
    # (kind, id) -> the seqs of its events, in log order: the identifier each event is
    # filed under in the timeline (its userId, else its anonymousId)
    events: dict[tuple[str, str], list[int]] = field(default_factory=dict)


# A run: consecutive events of a page that sent the same userId and anonymousId, as
# (seqs, msgs, user, anon), ``user`` and ``anon`` those ids checked by ``Rules.usable``.
# A plain tuple: a dataclass's __init__ cost ~1,500 instructions per run (callgrind).
Run = tuple[Sequence[int], Sequence[Message], str | None, str | None]


def runs(seqs: Sequence[int], msgs: Sequence[Message], rules: Rules) -> list[Run]:
    """A page's events (in log order) as :data:`Run` s for :meth:`Graph.apply_run`: a
    visit's events mostly carry the same ids, so the ids are checked once per run. An
    ``alias`` is a run of its own (its rules run for each one)."""
    out: list[Run] = []
    usable = rules.usable
    longest = rules.longest
    start, n = 0, len(msgs)
    if n == 0:
        return out
    first = msgs[0]
    user, anon, alias = first.userId, first.anonymousId, first.type == "alias"
    # Slices per run, not appends per event: this loop runs for every event of the log.
    # (Plain attribute reads: the interpreter specializes them for msgspec's Structs, which
    # makes them cheaper than itertools.groupby over an operator.attrgetter, measured.)
    for i in range(1, n):
        msg = msgs[i]
        if alias or msg.userId != user or msg.anonymousId != anon or msg.type == "alias":
            # Rules.usable's test for the usual id (a str longer than any blocked value,
            # not padded) inline: the call costs more than the test (-0.7 % per event).
            u, a = user, anon
            if u is not None and not (
                u.__class__ is str and len(u) > longest and not u[0].isspace() | u[-1].isspace()
            ):
                u = usable(u)
            if a is not None and not (
                a.__class__ is str and len(a) > longest and not a[0].isspace() | a[-1].isspace()
            ):
                a = usable(a)
            out.append((seqs[start:i], msgs[start:i], u, a))
            start = i
            user, anon, alias = msg.userId, msg.anonymousId, msg.type == "alias"
    out.append((seqs[start:], msgs[start:], usable(user), usable(anon)))
    return out


class Graph:
    """The merge rules over a :class:`Backing`, caching what it read (see module docstring)."""

    def __init__(self, rules: Rules | None = None, backing: Backing | None = None) -> None:
        self.rules = rules or Rules()
        self.backing: Backing = backing or Empty()
        self._ids: dict[tuple[str, str], str | None] = {}
        self._profiles: dict[str, Profile | None] = {}
        self._links: dict[str, list[Link]] = {}
        self._changes = Changes()
        self._generation = 0  # bumped whenever an identifier points somewhere new
        # The last event's (userId, anonymousId as sent, generation, profile): while no
        # identifier moves, the next event with the same ids lands on the same profile.
        self._memo: tuple[Any, Any, int, Profile] | None = None

    # -- reads (cached) ----------------------------------------------------------

    def profile_of(self, kind: str, value: str) -> str | None:
        key = (kind, value)
        pid: str | None = self._ids.get(key, _MISSING)
        if pid is _MISSING:
            pid = self._ids[key] = self.backing.profile_of(kind, value)
        return pid

    def profile(self, profile_id: str) -> Profile | None:
        profile: Profile | None = self._profiles.get(profile_id, _MISSING)
        if profile is _MISSING:
            profile = self._profiles[profile_id] = self.backing.profile(profile_id)
        return profile

    def links_of(self, anonymous_id: str) -> list[Link]:
        links = self._links.get(anonymous_id)
        if links is None:
            links = self._links[anonymous_id] = list(self.backing.links_of(anonymous_id))
        return links

    def lookup(self, kind: str, value: str) -> Profile | None:
        # profile_of() then profile(), inline: a few times per person, and the cache
        # mostly holds both (a call costs more than the look-ups it makes)
        pid = self._ids.get((kind, value), _MISSING)
        if pid is _MISSING:
            pid = self.profile_of(kind, value)
        if pid is None:
            return None
        profile = self._profiles.get(pid, _MISSING)
        return self.profile(pid) if profile is _MISSING else profile

    def seed(
        self,
        ids: Mapping[tuple[str, str], str | None],
        profiles: Mapping[str, Profile | None],
        links: Mapping[str, list[Link]],
    ) -> None:
        """Cache what the store read in bulk ahead of a page (absent ones as None)."""
        for key, pid in ids.items():
            self._ids.setdefault(key, pid)
        for pid, profile in profiles.items():
            self._profiles.setdefault(pid, profile)
        for anon, found in links.items():
            self._links.setdefault(anon, found)

    def cached_ids(self) -> Mapping[tuple[str, str], str | None]:
        """The identifiers whose profile the cache holds (no read needed), read-only."""
        return self._ids

    def trim(self, profiles: int) -> None:
        """Keep the cache across pages (what it holds is what the store committed: the
        next page's hot profiles need no read) unless it holds more than ``profiles``."""
        if len(self._profiles) > profiles:
            self.forget()

    def forget(self) -> None:
        """Drop the cache (after the store wrote the changes), keeping memory bounded."""
        self._memo = None
        self._ids.clear()
        self._profiles.clear()
        self._links.clear()

    # -- writes ------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def _set_id(self, kind: str, value: str, pid: str) -> None:
        self._generation += 1  # an identifier moved: apply_run's memo is stale
        self._ids[(kind, value)] = pid
        self._changes.ids[(kind, value)] = pid

    def _dirty(self, profile: Profile) -> None:
        self._changes.profiles[profile.profile_id] = profile

    def _refuse(self, reason: str) -> None:
        self._changes.refused[reason] += 1

    def _new_profile(self, kind: str, value: str, seq: int) -> Profile:
        pid = profile_id_for(kind, value)
        changes = self._changes
        # Profile(pid, seq), its fields set here: the dataclass's __init__ tests each
        # argument against its default and calls list() or dict() per field (callgrind:
        # ~1 % of the mix's instructions per event, two new profiles per person).
        profile = _allocate(Profile)
        profile.profile_id = pid
        profile.created_seq = seq
        profile.user_ids = []
        profile.anonymous_ids = []
        profile.traits = {}
        profile.first_seen = profile.last_seen = None
        profile.event_count = 0
        profile.events_by_type = {}
        profile.revenue = 0
        profile.groups = []
        profile.key = 0
        self._profiles[pid] = profile
        if pid in changes.removed:
            # Made again after it was merged away in this page: what the store holds of it
            # (if anything: it may have been made in this page too) is overwritten.
            changes.removed.discard(pid)
            profile.key = changes.removed_keys.pop(pid, 0)
        else:
            changes.created.add(pid)
        self._set_id(kind, value, pid)
        return profile

    def _user_profile(self, user_id: str, seq: int, ts: str) -> Profile:
        found = self.lookup(USER, user_id)
        if found is not None:
            return found
        profile = self._new_profile(USER, user_id, seq)
        profile.user_ids.append(user_id)
        self._changes.links.append(Link(None, user_id, ts, seq))
        self._dirty(profile)
        return profile

    # -- the rules ---------------------------------------------------------------

    def apply(self, seq: int, msg: Message | Mapping[str, Any]) -> Profile | None:
        """Take one stored event (parsed: :func:`eventd.identity.message.parse`, or a dict);
        returns the profile it was counted on (None: no usable id)."""
        if not isinstance(msg, Message):
            msg = Message.of(msg)
        usable = self.rules.usable
        return self.apply_run([seq], [msg], usable(msg.userId), usable(msg.anonymousId))

    def apply_run(
        self, seqs: Sequence[int], msgs: Sequence[Message], user: str | None, anon: str | None
    ) -> Profile | None:
        """:meth:`apply` of consecutive events (:func:`runs`) that all sent the same userId
        and anonymousId, ``user`` and ``anon`` (those ids checked: ``Rules.usable``, None
        when absent or blocked); returns the profile the last one was counted on.

        Exactly what applying them one by one does: each event goes through the rules
        until one lands where the memo says the next will too (no identifier moved, its
        link not refused); from there the rest of the run is filed and counted at once.
        So an ``alias`` may only come first in a run (:func:`runs` makes it a run alone):
        its rules run for every alias."""
        profile: Profile | None = None
        # The identifier the run's events are filed under in the timeline (its userId,
        # else its anonymousId); only read once an event was counted (an id was usable).
        key = (USER, user) if user is not None else (ANONYMOUS, anon or "")
        n = len(msgs)
        i = 0
        while i < n:
            profile = self._resolve(seqs[i], msgs[i], user, anon)
            if profile is None:
                i += 1
                continue
            memo = self._memo
            # The memo's check for the next event of the run (its ids are these, as sent):
            # when it holds, it holds for every later one (counting moves no identifier).
            j = n if memo is not None and memo[2] == self._generation else i + 1
            changes = self._changes
            filed = changes.events.get(key)
            if filed is None:
                changes.events[key] = list(seqs[i:j])
            else:
                filed += seqs[i:j]
            profile.count(msgs[i:j] if i or j < n else msgs)
            changes.profiles[profile.profile_id] = profile  # _dirty(), inline
            i = j
        return profile

    def _resolve(
        self, seq: int, msg: Message, user: str | None, anon: str | None
    ) -> Profile | None:
        """The rules for one event: the profile it is counted on (None: no usable id)."""
        raw_ts = msg.timestamp
        ts = raw_ts if isinstance(raw_ts, str) else ""
        memo = self._memo
        if msg.type == "alias":
            memo = None
            raw_prev = msg.previousId
            previous = self.rules.usable(raw_prev)
            if user is not None and previous is not None:
                self._alias(previous, user, seq, ts)
            elif msg.userId is not None and raw_prev is not None:
                self._refuse(BLOCKED_VALUE)
        raw = (msg.userId, msg.anonymousId)
        if memo is not None and memo[2] == self._generation and memo[:2] == raw:
            # The same ids as the last event (as sent: a blocked one asks for a refusal),
            # and no identifier has moved since: the same profile, with nothing to link
            # or refuse (most events of a visit).
            return memo[3]
        linked = True  # nothing asked for was refused
        if user is not None and anon is not None:
            linked = self._link(anon, user, seq, ts)
        elif msg.userId is not None and msg.anonymousId is not None:
            self._refuse(BLOCKED_VALUE)  # both sent, one blocked: the link is refused
            linked = False
        if user is not None:
            profile = self._user_profile(user, seq, ts)
        elif anon is not None:
            profile = self.lookup(ANONYMOUS, anon) or self._anonymous_profile(anon, seq)
        else:
            return None
        self._memo = (*raw, self._generation, profile) if linked else None
        return profile

    def _anonymous_profile(self, anon: str, seq: int) -> Profile:
        profile = self._new_profile(ANONYMOUS, anon, seq)
        profile.anonymous_ids.append(anon)
        return profile

    def _link(self, anon: str, user: str, seq: int, ts: str) -> bool:
        """Link ``anon`` to ``user``'s profile; False when the link is refused."""
        links = self.links_of(anon)
        if any(x.user_id == user for x in links):
            return True  # known pair: nothing changes
        profile = self._user_profile(user, seq, ts)
        current = self.lookup(ANONYMOUS, anon)
        if current is profile:
            self._add_link(links, Link(anon, user, ts, seq), profile)  # via an aliased userId
            return True
        if len(profile.anonymous_ids) >= self.rules.max_anonymous_ids:
            self._refuse(MAX_ANONYMOUS_IDS)
            return False
        if current is not None and current.user_ids:
            # A shared device: another person signed in on it before. Both keep it; its
            # new anonymous events go to this user from now on.
            self._refuse(SHARED_ANONYMOUS_ID)
        elif current is not None:
            self._merge(profile, current)  # the visitor's history before signing in
        self._add_link(links, Link(anon, user, ts, seq), profile)
        return True  # linked (a shared device's merge refused, the pair linked all the same)

    def _add_link(self, links: list[Link], link: Link, profile: Profile) -> None:
        assert link.anonymous_id is not None
        links.append(link)
        self._changes.links.append(link)
        if link.anonymous_id not in profile.anonymous_ids:
            profile.anonymous_ids.append(link.anonymous_id)
        self._set_id(ANONYMOUS, link.anonymous_id, profile.profile_id)
        self._dirty(profile)

    def _alias(self, previous: str, user: str, seq: int, ts: str) -> None:
        if previous == user:
            return
        if self.profile_of(USER, previous) is None:
            self._link(previous, user, seq, ts)  # previousId was the visitor's anonymousId
            return
        older = self._user_profile(previous, seq, ts)
        found = self.lookup(USER, user)
        if found is None:
            older.user_ids.append(user)
            self._set_id(USER, user, older.profile_id)
            self._changes.links.append(Link(None, user, ts, seq))
            self._dirty(older)
            return
        if found is older:
            return
        keep, gone = sorted((older, found), key=lambda p: (p.created_seq, p.profile_id))
        self._merge(keep, gone)

    def _merge(self, keep: Profile, gone: Profile) -> None:
        """``gone`` becomes part of ``keep``: its ids point at ``keep`` from now on."""
        keep.absorb(gone)
        for user in gone.user_ids:
            self._set_id(USER, user, keep.profile_id)
        for anon in gone.anonymous_ids:
            # A shared anonymousId another person owns now stays theirs.
            if self.profile_of(ANONYMOUS, anon) == gone.profile_id:
                self._set_id(ANONYMOUS, anon, keep.profile_id)
        self._changes.resend_users.update(gone.user_ids)
        self._changes.profiles.pop(gone.profile_id, None)
        self._changes.removed.add(gone.profile_id)
        if gone.key:
            self._changes.removed_keys[gone.profile_id] = gone.key
        self._profiles[gone.profile_id] = None
        self._dirty(keep)
