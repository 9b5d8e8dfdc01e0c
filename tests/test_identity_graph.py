"""The identity graph's merge rules (eventd/identity/graph.py), as pure logic."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.identity.graph import (
    ANONYMOUS,
    USER,
    Graph,
    Link,
    Profile,
    Rules,
    anonymous_ranges,
    owner_at,
    profile_id_for,
    runs,
)
from eventd.identity.message import Message, parse, parse_lines, parse_page


class Log:
    """Feeds a graph messages in log order, with seqs and increasing timestamps."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.graph = Graph(rules)
        self.seq = 0

    def send(self, type: str = "track", **fields: Any) -> Profile | None:
        self.seq += 1
        msg = {"type": type, "timestamp": f"2026-11-01T10:00:{self.seq:02d}.000Z", **fields}
        return self.graph.apply(self.seq, msg)

    def profile(self, kind: str, value: str) -> dict[str, Any] | None:
        found = self.graph.lookup(kind, value)
        return None if found is None else found.public()

    def user(self, user_id: str) -> dict[str, Any]:
        found = self.profile(USER, user_id)
        assert found is not None
        return found


def test_anonymous_history_joins_the_user_who_signs_in() -> None:
    log = Log()
    log.send(anonymousId="a1", event="Viewed Cars")
    log.send(anonymousId="a1", event="Chose Make", properties={"revenue": 0})
    log.send("identify", anonymousId="a1", userId="u1", traits={"make": "Volvo"})
    log.send(userId="u1", anonymousId="a1", event="Car Connected", properties={"revenue": 9.5})
    p = log.user("u1")
    assert p == {
        "profile_id": profile_id_for(USER, "u1"),
        "user_ids": ["u1"],
        "anonymous_ids": ["a1"],
        "traits": {"make": "Volvo"},
        "first_seen": "2026-11-01T10:00:01.000Z",
        "last_seen": "2026-11-01T10:00:04.000Z",
        "event_count": 4,
        "events_by_type": {"track": 3, "identify": 1},
        "revenue": 9.5,
        "groups": [],
    }
    assert log.profile(ANONYMOUS, "a1") == p
    changes = log.graph.take_changes()
    assert changes.refused == {}
    assert profile_id_for(ANONYMOUS, "a1") in changes.removed
    assert [(x.anonymous_id, x.user_id, x.seq) for x in changes.links] == [
        (None, "u1", 3),
        ("a1", "u1", 3),
    ]


def test_a_shared_laptop_never_merges_two_users() -> None:
    log = Log()
    log.send(anonymousId="laptop", event="Viewed Cars")  # before anyone signs in
    log.send("identify", anonymousId="laptop", userId="alice")
    log.send(anonymousId="laptop", event="Chose Make")  # alice's
    log.send("identify", anonymousId="laptop", userId="bob")
    log.send(anonymousId="laptop", event="Chose Model")  # bob's from now on
    log.send("identify", anonymousId="laptop", userId="alice")  # a known pair: no change
    log.send(anonymousId="laptop", event="Car Connected")  # still bob's (links.py's rule)
    alice, bob = log.user("alice"), log.user("bob")
    assert alice["profile_id"] != bob["profile_id"]
    assert (alice["user_ids"], alice["anonymous_ids"]) == (["alice"], ["laptop"])
    assert (bob["user_ids"], bob["anonymous_ids"]) == (["bob"], ["laptop"])
    assert alice["event_count"] == 4  # 1 before sign-in, identify, 1 after, identify again
    assert bob["event_count"] == 3
    assert log.profile(ANONYMOUS, "laptop") == bob
    assert log.graph.take_changes().refused == {"shared_anonymous_id": 1}


@pytest.mark.parametrize("blocked", ["null", " NULL ", "undefined", "0", "-1", "[object Object]"])
def test_blocked_values_never_link(blocked: str) -> None:
    log = Log()
    log.send("identify", anonymousId=blocked, userId="u1")
    log.send("identify", anonymousId=blocked, userId="u2")
    log.send("identify", anonymousId="a3", userId=blocked)
    log.send("identify", anonymousId="a4", userId=blocked)
    log.send(anonymousId=blocked)  # no usable id: counted on no profile
    assert log.user("u1")["anonymous_ids"] == []
    assert log.user("u1")["profile_id"] != log.user("u2")["profile_id"]
    # a blocked userId leaves the event anonymous: on the anonymousId's own profile
    assert log.profile(ANONYMOUS, "a3") == {
        **Profile(profile_id_for(ANONYMOUS, "a3"), 3).public(),
        "anonymous_ids": ["a3"],
        "event_count": 1,
        "events_by_type": {"identify": 1},
        "first_seen": "2026-11-01T10:00:03.000Z",
        "last_seen": "2026-11-01T10:00:03.000Z",
    }
    assert log.profile(ANONYMOUS, "a3") != log.profile(ANONYMOUS, "a4")
    assert log.profile(USER, blocked) is None
    assert log.graph.take_changes().refused == {"blocked_value": 4}


def test_configured_blocked_values_replace_the_defaults() -> None:
    log = Log(Rules.of(["Guest-User"], 100))
    log.send("identify", anonymousId="a1", userId="guest-user ")
    log.send("identify", anonymousId="a2", userId="null")  # no longer blocked
    assert log.profile(USER, "guest-user ") is None
    assert log.user("null")["anonymous_ids"] == ["a2"]
    assert log.graph.take_changes().refused == {"blocked_value": 1}


def test_max_anonymous_ids_refuses_further_devices() -> None:
    log = Log(Rules.of([], 2))
    for device in ("d1", "d2", "d3", "d3"):
        log.send(anonymousId=device)
        log.send("identify", anonymousId=device, userId="u1")
    assert log.user("u1")["anonymous_ids"] == ["d1", "d2"]
    assert log.profile(ANONYMOUS, "d3") is not None
    assert log.profile(ANONYMOUS, "d3") != log.user("u1")
    assert log.profile(ANONYMOUS, "d3")["event_count"] == 2  # type: ignore[index] # its tracks
    assert log.graph.take_changes().refused == {"max_anonymous_ids": 2}  # per event asking


def test_alias_merges_two_users_into_the_older_profile() -> None:
    log = Log()
    log.send("identify", anonymousId="phone", userId="u-old", traits={"make": "Audi", "a": 1})
    log.send("identify", anonymousId="laptop", userId="u-new", traits={"make": "BMW"})
    log.send(userId="u-new", event="Order", properties={"revenue": 20})
    log.send("group", userId="u-old", groupId="g1")
    log.send("alias", previousId="u-new", userId="u-old")
    p = log.user("u-old")
    assert p == log.user("u-new") == log.profile(ANONYMOUS, "laptop")
    assert p["profile_id"] == profile_id_for(USER, "u-old")
    assert p["user_ids"] == ["u-old", "u-new"]
    assert sorted(p["anonymous_ids"]) == ["laptop", "phone"]
    assert p["traits"] == {"make": "BMW", "a": 1}  # the latest identify wins per trait
    assert (p["event_count"], p["revenue"], p["groups"]) == (5, 20, ["g1"])
    changes = log.graph.take_changes()
    assert changes.resend_users == {"u-new"}
    assert profile_id_for(USER, "u-new") in changes.removed
    assert profile_id_for(USER, "u-new") not in changes.profiles


def test_alias_to_a_new_user_id_adds_it() -> None:
    log = Log()
    log.send("identify", userId="u1")
    log.send("alias", previousId="u1", userId="u2")
    assert log.user("u2")["user_ids"] == ["u1", "u2"]


def test_alias_with_an_anonymous_previous_id_links_it() -> None:
    log = Log()
    log.send(anonymousId="a1", event="Viewed")
    log.send("alias", previousId="a1", userId="u1")
    p = log.user("u1")
    assert (p["anonymous_ids"], p["event_count"]) == (["a1"], 2)


def test_alias_of_blocked_ids_is_refused() -> None:
    log = Log()
    log.send("identify", userId="u1")
    log.send("alias", previousId="null", userId="u1")
    log.send("alias", previousId="u1", userId="undefined")
    assert log.user("u1")["user_ids"] == ["u1"]
    assert log.graph.take_changes().refused == {"blocked_value": 2}


def test_only_alias_merges_users_even_through_an_alias_linked_device() -> None:
    log = Log()
    log.send("identify", anonymousId="a1", userId="u1")
    log.send("alias", previousId="u1", userId="u2")
    log.send("identify", anonymousId="a1", userId="u2")  # same profile: a plain link
    log.send("identify", anonymousId="a1", userId="u3")  # another person on that device
    assert log.user("u2")["user_ids"] == ["u1", "u2"]
    assert log.user("u3")["user_ids"] == ["u3"]
    assert log.graph.take_changes().refused == {"shared_anonymous_id": 1}


def test_context_traits_and_timestamps_latest_wins() -> None:
    log = Log()
    g = log.graph
    g.apply(1, {"type": "identify", "userId": "u", "timestamp": "2026-01-02T00:00:00.000Z",
                "traits": {"plan": "pro"}})  # fmt: skip
    # an event stored later but timestamped earlier does not overwrite
    g.apply(2, {"type": "track", "userId": "u", "timestamp": "2026-01-01T00:00:00.000Z",
                "context": {"traits": {"plan": "free", "email": "u@x"}}})  # fmt: skip
    p = log.user("u")
    assert p["traits"] == {"plan": "pro", "email": "u@x"}
    assert (p["first_seen"], p["last_seen"]) == (
        "2026-01-01T00:00:00.000Z",
        "2026-01-02T00:00:00.000Z",
    )


def test_revenue_counts_numbers_of_track_events_only() -> None:
    log = Log()
    for revenue in (10, 2.5, "3", True, None):
        log.send(userId="u", event="Order", properties={"revenue": revenue})
    log.send("page", userId="u", properties={"revenue": 100})
    assert log.user("u")["revenue"] == 12.5


def test_the_graph_reads_what_it_does_not_hold_through_its_backing() -> None:
    """A second graph over the first one's state gives the same answers (what the store
    does between pages)."""
    first = Log()
    first.send(anonymousId="a1")
    first.send("identify", anonymousId="a1", userId="u1")
    changes = first.graph.take_changes()

    class Stored:
        def profile_of(self, kind: str, value: str) -> str | None:
            return changes.ids.get((kind, value))

        def profile(self, profile_id: str) -> Profile | None:
            found = changes.profiles.get(profile_id)
            return None if found is None else Profile.from_record(found.record())

        def links_of(self, anonymous_id: str) -> list[Link]:
            return [x for x in changes.links if x.anonymous_id == anonymous_id]

    second = Graph(backing=Stored())
    second.apply(3, {"type": "track", "anonymousId": "a1", "timestamp": "2026-11-01T10:00:03.000Z"})
    second.apply(4, {"type": "identify", "anonymousId": "a1", "userId": "u1"})
    found = second.lookup(USER, "u1")
    assert found is not None
    assert (found.event_count, found.anonymous_ids) == (4, ["a1"])
    assert second.take_changes().links == []


def test_owner_and_ranges_follow_links_py() -> None:
    links = [Link("d", "alice", "t", 10), Link("d", "bob", "t", 20), Link(None, "alice", "t", 10)]
    assert owner_at(links[:2], 5) is None
    assert owner_at(links[:2], 15) == links[0]
    assert owner_at(links[:2], 25) == links[1]
    assert anonymous_ranges(links, ["alice"]) == [(0, 20)]
    assert anonymous_ranges(links, ["bob"]) == [(20, 2**63 - 1)]
    assert anonymous_ranges(links, ["alice", "bob"]) == [(0, 2**63 - 1)]


ids = st.sampled_from(["u1", "u2", "u3", "null", None])
anons = st.sampled_from(["a1", "a2", "a3", "0", None])
messages = st.lists(
    st.tuples(st.sampled_from(["track", "identify", "alias"]), ids, anons, ids), max_size=40
)


@settings(derandomize=True, max_examples=300)
@given(messages)
def test_invariants_hold_for_any_log(log: list[tuple[str, Any, Any, Any]]) -> None:
    """Every event with a usable id is counted once; every identifier points at a profile
    that lists it; userIds are in one profile each; no profile exceeds the limit."""
    rules = Rules.of(["null", "0"], 2)
    g = Graph(rules)
    counted = 0
    for seq, (kind, user, anon, previous) in enumerate(log, start=1):
        msg = {"type": kind, "userId": user, "anonymousId": anon, "previousId": previous}
        msg = {k: v for k, v in msg.items() if v is not None}
        counted += g.apply(seq, msg) is not None
    profiles = {p.profile_id: p for p in g.take_changes().profiles.values()}
    assert sum(p.event_count for p in profiles.values()) == counted
    owners: dict[str, str] = {}
    for p in profiles.values():
        assert len(p.anonymous_ids) <= 2 or len(p.user_ids) != 1  # alias may go past it
        for u in p.user_ids:
            assert u not in owners
            owners[u] = p.profile_id
            assert g.profile_of(USER, u) == p.profile_id
        for a in p.anonymous_ids:
            assert a in profiles[g.profile_of(ANONYMOUS, a) or ""].anonymous_ids


@settings(derandomize=True, max_examples=300)
@given(messages)
def test_the_last_events_memo_changes_nothing(log: list[tuple[str, Any, Any, Any]]) -> None:
    """Graph.apply skips linking for an event with the same ids as the last one while no
    identifier has moved: the same log through a graph that never uses that memo makes
    exactly the same changes (profiles, identifiers, links, refusals, timeline)."""
    rules = Rules.of(["null", "0"], 2)
    fast, slow = Graph(rules), Graph(rules)
    for seq, (kind, user, anon, previous) in enumerate(log + log, start=1):  # repeats
        msg = {"type": kind, "userId": user, "anonymousId": anon, "previousId": previous}
        msg = {k: v for k, v in msg.items() if v is not None}
        fast.apply(seq, msg)
        slow._memo = None
        slow.apply(seq, msg)
    a, b = fast.take_changes(), slow.take_changes()
    assert {k: p.public() for k, p in a.profiles.items()} == {
        k: p.public() for k, p in b.profiles.items()
    }
    assert (a.ids, a.links, a.refused, a.events, a.removed) == (
        b.ids,
        b.links,
        b.refused,
        b.events,
        b.removed,
    )


timestamps = st.sampled_from(["2026-11-01T10:00:01.000Z", "2026-11-01T10:00:02.000Z", "", None, 7])
traits = st.none() | st.dictionaries(st.sampled_from(["plan", "car"]), st.integers(0, 2))
events = st.lists(
    st.tuples(
        st.sampled_from(["track", "identify", "alias", "group", "page"]),
        ids,
        anons,
        ids,
        st.booleans(),  # the same ids as the event before: runs
        timestamps,
        traits,  # identify traits
        traits,  # context.traits
        st.sampled_from([None, 1, 2.5, True, "3"]),  # properties.revenue
        st.sampled_from([None, "g1", "g2"]),  # groupId
    ),
    max_size=60,
)


@settings(derandomize=True, max_examples=300)
@given(events, st.integers(1, 9))
def test_runs_apply_exactly_as_events_one_by_one(
    log: list[tuple[Any, ...]], page_size: int
) -> None:
    """The writer applies a page's runs of same-id events (``runs``, ``apply_run``: the
    memo's checks once per run, the counters once per run): the same log applied event
    by event, never using the memo, makes exactly the same changes, counters, traits
    (with their timestamps) and timeline."""
    rules = Rules.of(["null", "0"], 2)
    msgs: list[Message] = []
    for kind, user, anon, previous, same, ts, traits, ctx, revenue, group in log:
        if same and msgs:
            user, anon = msgs[-1].userId, msgs[-1].anonymousId
        msgs.append(
            Message.of(
                {
                    k: v
                    for k, v in {
                        "type": kind,
                        "userId": user,
                        "anonymousId": anon,
                        "previousId": previous,
                        "timestamp": ts,
                        "traits": traits,
                        "context": {"traits": ctx},
                        "properties": {"revenue": revenue},
                        "groupId": group,
                    }.items()
                    if v is not None
                }
            )
        )
    seqs = list(range(1, len(msgs) + 1))
    fast, slow = Graph(rules), Graph(rules)
    for at in range(0, len(msgs), page_size):
        for run in runs(seqs[at : at + page_size], msgs[at : at + page_size], rules):
            fast.apply_run(*run)
    for seq, msg in zip(seqs, msgs, strict=True):
        slow._memo = None
        slow.apply(seq, msg)
    a, b = fast.take_changes(), slow.take_changes()
    assert {k: (p.record(), p.public()) for k, p in a.profiles.items()} == {
        k: (p.record(), p.public()) for k, p in b.profiles.items()
    }
    assert (a.ids, a.links, a.refused, a.events, a.removed, a.resend_users) == (
        b.ids,
        b.links,
        b.refused,
        b.events,
        b.removed,
        b.resend_users,
    )


def test_a_body_whose_context_is_no_object_is_read_all_the_same() -> None:
    msg = parse(
        b'{"type":"track","userId":"u1","context":"x","properties":[1],'
        b'"traits":{"n":123456789012345678901234567890}}'
    )
    assert (msg.type, msg.userId, msg.context, msg.properties) == ("track", "u1", None, None)
    assert msg.traits == {"n": 123456789012345678901234567890}
    with pytest.raises(ValueError):
        parse(b"[1, 2]")
    with pytest.raises(ValueError):
        parse(b"{not json")


def test_a_page_is_parsed_whole_or_event_by_event_alike() -> None:
    bodies = [
        b'{"type":"identify","userId":"u1","traits":{"n":123456789012345678901234567890}}',
        b'{"type":"track","anonymousId":"a1","properties":{"revenue":2.5},"context":{"ip":"x"}}',
    ]
    assert parse_page(bodies) == [parse(b) for b in bodies]
    odd = [*bodies, b'{"type":"track","userId":"u2","context":[]}']
    assert parse_page(odd) == [parse(b) for b in odd]
    assert parse_page(odd)[2].userId == "u2"
    # In one buffer (the log reader's lines): the same, or None to parse each on its own
    assert parse_lines(b"\n".join(bodies), 2) == parse_page(bodies)
    assert parse_lines(b"\n".join(odd), 3) is None  # context: no object
    assert parse_lines(b"\n".join(bodies), 3) is None  # a count that differs
    assert parse_lines(b"", 0) == []


def test_a_new_profile_has_every_field_the_dataclass_gives_it() -> None:
    """Graph._new_profile sets a Profile's fields itself (no dataclass __init__): each
    must be there, as the dataclass's defaults make them, and a new field must not be
    forgotten (a slot never set raises AttributeError when read)."""
    graph = Graph()
    made = graph._new_profile(USER, "user-000000000001", 7)
    expected = Profile(profile_id_for(USER, "user-000000000001"), 7)
    for f in dataclasses.fields(Profile):
        assert getattr(made, f.name) == getattr(expected, f.name), f.name
    assert made.record() == expected.record() and made.key == expected.key == 0
    # Fresh containers, not shared between profiles.
    other = graph._new_profile(ANONYMOUS, "anon-0000000000001", 8)
    assert other.user_ids is not made.user_ids and other.traits is not made.traits
    assert other.events_by_type is not made.events_by_type and other.groups is not made.groups
    assert other.anonymous_ids is not made.anonymous_ids
