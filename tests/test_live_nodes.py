"""LiveNodes: who shares a destination's limits, from readings of the heartbeats."""

from __future__ import annotations

from eventd.store.live_nodes import LiveNodes


def test_a_beat_missing_from_one_reading_keeps_its_node_counted() -> None:
    """After a quorum loss every beat has expired; each node read in that moment
    saw only itself (issue #14's trial: both took the whole limit)."""
    live = LiveNodes("b", grace=10.0)
    assert live.read({"a", "b", "c"}, now=100.0) == (1, 3)
    assert live.read({"b"}, now=101.0) == (1, 3)  # a and c missing since 101
    assert live.read({"a", "b"}, now=108.0) == (1, 3)  # a back; c 7 s missing
    assert live.read({"a", "b"}, now=111.0) == (1, 2)  # c missing 10 s: gone
    assert live.read({"b"}, now=112.0) == (1, 2)  # a missing again: a fresh 10 s
    assert live.read({"b"}, now=121.9) == (1, 2)
    assert live.read({"b"}, now=122.0) == (0, 1)


def test_a_node_counts_itself_and_a_new_node_at_once() -> None:
    live = LiveNodes("m", grace=10.0)
    assert live.read(set(), now=0.0) == (0, 1)  # its own beat not there yet
    assert live.read({"z"}, now=1.0) == (0, 2)  # a joining node counts at once
    assert live.read({"a", "m", "z"}, now=2.0) == (1, 3)
