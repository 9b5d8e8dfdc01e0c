"""The identity graph on the cluster (issue 15, item 8): two ``eventd serve`` nodes on a
real 3-server NATS JetStream cluster, identity on (the default).

Real processes on real sockets (tests/test_cluster_serve.py's harness): an identify
sent to node A makes a profile node B answers for; an anonymous event in the log
after that identify reaches the webhook resolved, with the profile's trait, from
whichever node delivers it; one node's writer applies the log (the lease), and when
it is killed with SIGKILL the other node's takes over from the shared cursor.
Waiting is on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EventdProcess, Received, Sink, admin_get, basic
from tests.nats_cluster import NatsCluster
from tests.test_cluster_serve import WRITE_KEY, admin_post, stored_seq, two_nodes, wait_until

pytestmark = pytest.mark.slow

TS = "2026-11-30T01:00:00.000Z"


def send(node: EventdProcess, *events: dict[str, Any]) -> None:
    body = {"batch": [{"timestamp": TS, **e} for e in events]}
    req = urllib.request.Request(
        node.url + "/v1/batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": basic(WRITE_KEY)},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def profile(node: EventdProcess, ident: str, suffix: str = "") -> tuple[int, Any]:
    return admin_get(f"{node.url}/admin/profiles/{ident}{suffix}", node.admin_token)


def known(node: EventdProcess, ident: str) -> bool:
    return profile(node, ident)[0] == 200


def delivered(sink: Sink) -> dict[str, dict[str, Any]]:
    """messageId -> the event as the webhook got it (the last copy)."""
    out: dict[str, dict[str, Any]] = {}
    with sink.cond:
        for r in sink.received:
            body = r.json()
            for event in body if isinstance(body, list) else [body]:
                out[event["messageId"]] = event
    return out


@pytest.fixture
def identity_nodes(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> Iterator[tuple[Sink, list[EventdProcess]]]:
    def configure(config: dict[str, Any]) -> None:
        del config["identity"]  # on: the default
        config["storage"]["stream"] = "IDE2E"
        config["destinations"]["hook"].update(
            resolve_identity=True, enrich_traits=["car"], batch_size=10
        )
        config["destinations"]["hook"]["settings"]["forward_deletions"] = True

    first: list[EventdProcess] = []

    def reading(node: EventdProcess) -> None:
        """a first, and its writer leading before b starts: two writers bidding at
        once could make either lead (CI saw "not within 60s: a leads")."""
        wait_until(lambda: "identity graph reader started" in node.log(), 60, "reader")
        if not first:
            first.append(node)
            wait_until(lambda: "identity writer leading" in node.log(), 60, "a leads")

    with two_nodes(tmp_path, make_nats_cluster(3), configure, reading) as (sink, nodes):
        wait_until(lambda: "identity writer leading" in nodes[0].log(), 60, "a leads")
        yield sink, nodes


def test_identify_on_one_node_is_read_and_stitched_on_the_other_and_survives_a_kill(
    identity_nodes: tuple[Sink, list[EventdProcess]],
) -> None:
    sink, (a, b) = identity_nodes
    assert "identity writer leading" not in b.log()  # one writer: a's

    # Before sign-in (anonymous), then the sign-in, both through node a. The two are
    # in different partitions (v1's and ana's), whose stages forward to the log each
    # at its own pace: the sign-in is sent once m1 is in the log, so the log has m1
    # before the link (the order resolve_identity reads: eventd/identity/stitch.py).
    send(a, {"type": "track", "event": "Step 1", "anonymousId": "v1", "messageId": "m1"})
    wait_until(lambda: stored_seq(a, "m1") is not None, 60, "m1 in the log")
    send(
        a,
        {
            "type": "identify",
            "anonymousId": "v1",
            "userId": "ana",
            "traits": {"car": "bmw"},
            "messageId": "m2",
        },
    )
    # Node b, which does not write the graph, answers from the shared state.
    wait_until(lambda: known(b, "ana"), 60, "ana's profile readable on b")
    status, found = profile(b, "ana")
    assert status == 200
    assert (found["user_ids"], found["anonymous_ids"]) == (["ana"], ["v1"])
    assert found["traits"] == {"car": "bmw"}
    assert (found["event_count"], found["events_by_type"]) == (2, {"identify": 1, "track": 1})
    assert profile(b, "v1", "?kind=anonymous_id")[1]["profile_id"] == found["profile_id"]
    assert profile(b, "nobody")[0] == 404

    # An anonymous event stored after the identify (the graph has it: the profile is
    # readable), sent to b: delivered resolved, with the trait, by whichever node.
    send(b, {"type": "track", "event": "Step 2", "anonymousId": "v1", "messageId": "m3"})
    wait_until(lambda: {"m1", "m2", "m3"} <= set(delivered(sink)), 90, "m1-m3 delivered")
    seqs = [stored_seq(b, m) or 0 for m in ("m1", "m2", "m3")]
    assert 0 < seqs[0] < seqs[1] < seqs[2], seqs  # the log's order, read on the other node
    got = delivered(sink)
    assert "userId" not in got["m1"]  # before any link: stays anonymous
    assert got["m3"]["userId"] == "ana"
    assert got["m3"]["context"]["traits"] == {"car": "bmw"}
    assert got["m2"]["userId"] == "ana"

    # The stitched timeline, newest first, read on b (the events read from the log).
    wait_until(lambda: profile(b, "ana")[1]["event_count"] == 3, 60, "m3 in the graph")
    status, events = profile(b, "ana", "/events?limit=10")
    assert status == 200
    assert [e["event"]["messageId"] for e in events["events"]] == ["m3", "m2", "m1"]

    # kill -9 the writer's node: b's writer takes the lease when it lapses (10 s) and
    # goes on from the shared cursor: a new sign-in sent to b is applied.
    a.kill()
    send(
        b,
        {"type": "identify", "anonymousId": "v9", "userId": "bo", "messageId": "m4"},
        {"type": "track", "event": "Step 1", "userId": "ana", "messageId": "m5"},
    )
    wait_until(lambda: known(b, "bo"), 90, "bo's profile after a's writer died")
    assert "identity writer leading" in b.log()
    bo = profile(b, "bo")[1]
    assert (bo["user_ids"], bo["anonymous_ids"], bo["event_count"]) == (["bo"], ["v9"], 1)
    wait_until(lambda: profile(b, "ana")[1]["event_count"] == 4, 60, "m5 applied once")
    ana = profile(b, "ana")[1]
    assert ana["events_by_type"] == {"identify": 1, "track": 3}  # nothing applied twice


def is_delete(r: Received) -> bool:
    body = r.json()
    return isinstance(body, list) and bool(body) and body[0].get("type") == "delete"


def test_an_erasure_asked_of_the_node_that_does_not_write_the_graph_erases_everywhere(
    identity_nodes: tuple[Sink, list[EventdProcess]],
) -> None:
    """Issue 15 item 7 on the cluster: ``eventd suppressions add zoe --erase`` run
    against node b, whose writer does not lead: b asks a's writer to erase zoe's
    profile (two devices' anonymousIds) and deletes her events, the anonymous ones
    included; both nodes then answer 404 for each of her ids, her events are in no
    replay, kim's stay. The webhook is asked to delete her once: its first answer
    is a 503 with Retry-After 4 s, longer than a node's look for requested
    deletions (3 s), and the other node, which sees it requested, does not ask too."""
    sink, (a, b) = identity_nodes
    asked = []

    def answer(r: Received) -> Any:
        if is_delete(r):
            asked.append(r)
            return (503, {"Retry-After": "4"}) if len(asked) == 1 else 200
        return 200

    sink.handler = answer
    zoe = [
        {"type": "track", "event": "Step 1", "anonymousId": "w1", "messageId": "z1"},
        {"type": "identify", "anonymousId": "w1", "userId": "zoe", "messageId": "z2"},
        {"type": "track", "event": "Step 1", "anonymousId": "w2", "messageId": "z3"},
        {"type": "identify", "anonymousId": "w2", "userId": "zoe", "messageId": "z4"},
        {"type": "track", "event": "Step 2", "userId": "zoe", "messageId": "z5"},
    ]
    kim = [
        {"type": "identify", "anonymousId": "k1", "userId": "kim", "messageId": "k1"},
        {"type": "track", "event": "Step 1", "userId": "kim", "messageId": "k2"},
    ]
    for event in zoe:
        send(a, event)
    send(b, *kim)  # after hers: her events are not the log's newest
    everything = {e["messageId"] for e in zoe + kim}
    wait_until(lambda: set(delivered(sink)) >= everything, 90, "z1-z5, k1-k2 delivered")
    wait_until(lambda: profile(b, "zoe")[1].get("event_count") == 5, 60, "zoe in the graph")
    assert profile(b, "zoe")[1]["anonymous_ids"] == ["w1", "w2"]
    assert known(b, "kim")

    done = b.cli("suppressions", "add", "zoe", "--erase")
    assert done.returncode == 0, done.stderr
    assert "erased events: 5, erasure done" in done.stdout, done.stdout
    # a's writer erased the profile (b's never led).
    assert "profile erased" in a.log() and "identity writer leading" not in b.log()

    for node in (a, b):
        for ident in ("zoe", "w1", "w2"):
            assert profile(node, ident)[0] == 404, (node.url, ident)
            assert profile(node, ident, "/events")[0] == 404, (node.url, ident)
        assert profile(node, "kim")[1]["event_count"] == 2
        for mid in ("z1", "z2", "z3", "z4", "z5"):
            assert stored_seq(node, mid) is None, (node.url, mid)
    # The deletion, as the node that did not ask it reads it once it is done.
    shown = a.admin("GET", "/admin/suppressions/zoe?wait=60")
    assert (shown["erase"], shown["erased_events"]) == (True, 5)
    (deletion,) = shown["deletions"]
    assert (deletion["destination"], deletion["state"], deletion["attempts"]) == ("hook", "done", 2)
    assert (deletion["user_ids"], deletion["anonymous_ids"]) == (["zoe"], ["w1", "w2"])
    assert b.admin("GET", "/admin/suppressions/zoe")["deletions"] == shown["deletions"]
    assert len(asked) == 2  # the 503, then the one that did it: no node asked twice
    assert [m["userId"] for m in asked[1].json()] == ["zoe"]

    # Replay from before everything: kim's events again, none of hers.
    before = sink.message_ids()
    status, replay = admin_post(
        b, "/admin/replay", {"destination": "hook", "since": "2020-01-01T00:00:00Z"}
    )
    assert (status, replay["events"]) == (200, 2)
    wait_until(
        lambda: all(sink.message_ids()[m] == before[m] + 1 for m in ("k1", "k2")), 60, "replay"
    )
    after = sink.message_ids()
    assert {m: after[m] - before[m] for m in everything} == {
        m: int(m.startswith("k")) for m in everything
    }
