"""Reports on the cluster (issues 14 and 16): a duckdb destination is node-local, so
each of two ``eventd serve`` nodes on a real 3-server NATS JetStream cluster loads
every event into its own DuckDB file, and the same funnel comes from either node.

Real processes on real sockets (tests/test_cluster_serve.py's harness), identity on
(the default): people view a car anonymously, some sign in (an identify linking the
anonymousId), then go on signed in, each person's events sent by turns to node A and
node B. After a drain on both, ``GET /admin/reports/funnel`` on A and ``eventd report
funnel`` against B give the same JSON, equal to the answer tests/reports_data.py's
plain-Python rules compute from the events and the links the test knows it made
(which differs from the answer without the links: the identities table reached each
node's file through its node-local feed). Waiting is on conditions with deadlines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import reports_data
from tests.harness import EventdProcess, admin_get
from tests.nats_cluster import NatsCluster
from tests.test_cluster_identity import send
from tests.test_cluster_serve import node_config, two_nodes, wait_until

pytestmark = pytest.mark.slow

STEPS = ["Viewed Car", "Booked Test Drive", "Order Completed"]
START = datetime(2026, 10, 5, 9, tzinfo=UTC)


def people() -> reports_data.DataSet:
    """40 people: anonymous first views, sign-ins for 3 in 4 (linked: (anon, user)),
    then the funnel's later steps signed in, some too late for the 1-day window."""
    ds = reports_data.DataSet()
    for i in range(40):
        anon, user = f"a{i:02}", f"u{i:02}"
        t0 = START + timedelta(days=i % 9, minutes=7 * i)
        car = None if i % 7 == 0 else reports_data.CARS[i % 3]
        ds.add("app", "track", t0, None, anon, "Viewed Car", **({"car": car} if car else {}))
        identified = i % 4 != 3
        who: tuple[str | None, str | None] = (user, None) if identified else (None, anon)
        if identified:
            ds.add("app", "identify", t0 + timedelta(minutes=1), user, anon, plan="pro")
            ds.link(anon, user, user, t0 + timedelta(minutes=1))
        if i % 5 in (0, 1, 2):
            ds.add("app", "track", t0 + timedelta(hours=1), *who, "Booked Test Drive")
            if i % 5 in (0, 1):
                late = timedelta(days=2) if i % 5 == 1 else timedelta(hours=3)
                ds.add("app", "track", t0 + late, *who, "Order Completed", revenue=20.0)
    return ds


def funnel_over_http(node: EventdProcess) -> tuple[int, Any]:
    steps = ",".join(STEPS).replace(" ", "%20")
    return admin_get(f"{node.url}/admin/reports/funnel?steps={steps}&by=car", node.admin_token)


def with_duckdb(config: dict[str, Any]) -> None:
    """A node's config: identity on, a duckdb destination "analytics" (node-local:
    the file in the node's own data directory) beside the shared webhook "hook"."""
    del config["identity"]  # on: the default
    config["storage"]["stream"] = "REPORTS"
    data_dir = Path(config["storage"]["path"]).parent
    config["destinations"]["analytics"] = {
        "type": "duckdb",
        "batch_size": 25,
        "settings": {"path": str(data_dir / "analytics.duckdb")},
    }


def load(ds: reports_data.DataSet, a: EventdProcess, b: EventdProcess) -> None:
    """Send the events by turns to a and b, and drain both."""
    for k, ev in enumerate(ds.events):
        send((a, b)[k % 2], ev.message())
    for node in (a, b):
        # Each node's drain waits for its own consumer of "analytics" (the shared
        # "hook" for the cluster's): its lag is its own, 0 once drained.
        lags = {d["name"]: d["lag_events"] for d in node.drain(timeout=120)}
        assert lags == {"hook": 0, "analytics": 0}


def test_each_node_loads_every_event_and_answers_the_same_funnel(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    ds = people()
    expected = reports_data.funnel(ds, STEPS, timedelta(days=1), by="car")
    unstitched = reports_data.funnel(
        reports_data.DataSet(ds.events, []), STEPS, timedelta(days=1), by="car"
    )
    assert expected != unstitched  # the identities table matters to the answer
    assert expected["total"][2] > 0

    with two_nodes(tmp_path, make_nats_cluster(3), with_duckdb) as (_sink, (a, b)):
        # Each node has its own consumer of the duckdb destination, named by its id.
        ids = [(tmp_path / n / "data" / "node-id").read_text().strip() for n in "ab"]
        assert ids[0] != ids[1]
        load(ds, a, b)

        answers: dict[str, Any] = {}

        def same_on(node: EventdProcess) -> bool:
            # The events are in (drained); the links reach each file through its own
            # feed, which follows the graph's writer.
            status, body = funnel_over_http(node)
            answers[node.url] = (status, body)
            return status == 200 and body == expected

        for node in (a, b):
            try:
                wait_until(lambda n=node: same_on(n), 120, f"the funnel on {node.url}")  # type: ignore[misc]
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {answers[node.url]} != {expected}") from None
        run = b.cli("report", "funnel", "--steps", ",".join(STEPS), "--by", "car",
                    "--format", "json")  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == expected == funnel_over_http(a)[1]


def revenue_over_http(node: EventdProcess) -> tuple[int, Any]:
    return admin_get(f"{node.url}/admin/reports/revenue?period=month", node.admin_token)


def test_an_erasure_asked_of_one_node_deletes_the_person_from_every_node_s_file(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """``eventd suppressions add u01 --erase`` against node a: the duckdb destination is
    node-local, so each node deletes her (userId u01, anonymousId a01: her paid order
    of 20.0 and her anonymous view) from its own file, and both nodes' revenue
    reports then equal the plain-Python answer without her. Her deletion's record,
    read on b, shows each node's copy done. (Before: only the node holding the one
    claim deleted from its file; b's report still counted her.)"""
    ds = people()
    kept = reports_data.DataSet(
        [e for e in ds.events if e.user_id != "u01" and e.anonymous_id != "a01"],
        [link for link in ds.links if link.user_id != "u01"],
    )
    assert len(kept.events) == len(ds.events) - 4  # her view, identify, booking, order
    expected = reports_data.revenue(ds, "Order Completed", "revenue", "month")
    without = reports_data.revenue(kept, "Order Completed", "revenue", "month")
    assert expected != without  # her order counts

    cluster = make_nats_cluster(3)
    with two_nodes(tmp_path, cluster, with_duckdb) as (sink, (a, b)):
        ids = sorted((tmp_path / n / "data" / "node-id").read_text().strip() for n in "ab")
        load(ds, a, b)
        for node in (a, b):
            wait_until(
                lambda n=node: revenue_over_http(n) == (200, expected),  # type: ignore[misc]
                120,
                f"the revenue on {node.url}",
            )

        done = a.cli("suppressions", "add", "u01", "--erase")
        assert done.returncode == 0, done.stderr
        shown = b.admin("GET", "/admin/suppressions/u01?wait=90")
        # Each node's own file has lost her: both reports are the answer without her.
        for node in (a, b):
            assert revenue_over_http(node) == (200, without), node.url
        by_name = {d["destination"]: d for d in shown["deletions"]}
        analytics = by_name["analytics"]
        assert (analytics["state"], analytics["attempts"]) == ("done", 2), analytics
        assert (analytics["user_ids"], analytics["anonymous_ids"]) == (["u01"], ["a01"])
        assert [(n["node"], n["state"], n["attempts"]) for n in analytics["nodes"]] == [
            (ids[0], "done", 1),
            (ids[1], "done", 1),
        ]
        assert "nodes" not in by_name["hook"]  # shared: one copy, as on SQLite
        assert a.admin("GET", "/admin/suppressions/u01")["deletions"] == shown["deletions"]

        # A node that first consumes the destination after the erasure loads its file
        # from the log, which has none of her events left: it has no copy to run.
        (tmp_path / "c").mkdir()
        config = node_config(tmp_path / "c", cluster, sink)
        with_duckdb(config)
        c = EventdProcess(tmp_path / "c", config)
        try:
            c.start(timeout=90)
            lags = {d["name"]: d["lag_events"] for d in c.drain(timeout=120)}
            assert lags == {"hook": 0, "analytics": 0}
            wait_until(lambda: revenue_over_http(c) == (200, without), 120, "the revenue on c")
            shown_c = c.admin("GET", "/admin/suppressions/u01")["deletions"]
            assert shown_c == shown["deletions"]  # no copy of c's is waited for
        finally:
            c.kill()
