"""The on-disk 24 h dedup set (eventd/store/dedup.py) on real RocksDB directories:
the window rule against a reference model, survival across reopen, rebuild from a
log after losing the set, and partitioning that every process computes the same."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.store.dedup import DedupSet, dedup_key, partition_of

DAY = 86_400_000


def test_a_repeat_inside_the_window_is_not_new_and_one_past_it_is(tmp_path: Path) -> None:
    s = DedupSet(tmp_path / "p0", DAY)
    a, b = dedup_key("web", "a"), dedup_key("web", "b")
    # Inside one call, the second copy of a is a repeat.
    assert s.filter_new([(a, 1_000), (b, 1_000), (a, 1_001)]) == [0, 1]
    s.add([(a, 1_000), (b, 1_000)], watermark=2)
    assert s.filter_new([(a, 1_000 + DAY - 1)]) == []
    assert s.filter_new([(a, 1_000 + DAY)]) == [0]
    # The same messageId from another source is another event.
    assert s.filter_new([(dedup_key("ios", "a"), 2_000)]) == [0]
    s.close()


def test_a_groups_log_sequences_and_a_lost_range_are_kept_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    """What the jetstream stage asks before a purge and after a loss of the log's end."""
    s = DedupSet(tmp_path / "p0", DAY)
    a, b, c, old = (dedup_key("web", m) for m in ("a", "b", "c", "old"))
    s.add([(old, 500)])  # a key kept without a sequence (an older set)
    s.add_stored([(a, 1_000, 7), (b, 1_000, 9)], 9)
    assert s.forwarded_through([(a, 1_000), (b, 1_000), (old, 600)]) == 9
    assert s.forwarded_through([(old, 600)]) == 0
    assert s.forwarded_through([(a, 1_000), (c, 1_000)]) is None  # c never forwarded
    assert s.forwarded_through([(a, 1_000 + DAY)]) is None  # past the window
    assert s.stored_within([(a, 1_000), (b, 1_000), (c, 1_000), (old, 600)], (7, 9)) == [1]
    assert s.stored_within([(a, 1_000), (b, 1_000)], (6, 9)) == [0, 1]
    assert s.mending is None
    s.set_mending((6, 9))
    s.close()
    s = DedupSet(tmp_path / "p0", DAY)
    assert s.mending == (6, 9) and s.watermark == 9
    s.set_mending(None)
    assert s.mending is None
    s.close()


def test_keys_and_watermark_survive_a_reopen(tmp_path: Path) -> None:
    s = DedupSet(tmp_path / "p0", DAY)
    keys = [(dedup_key("web", f"m{i}"), 5_000) for i in range(1_000)]
    s.add(keys, watermark=1_000)
    s.close()
    s = DedupSet(tmp_path / "p0", DAY)
    assert s.watermark == 1_000
    assert s.filter_new(keys) == []
    s.close()


def test_rebuild_reads_the_log_after_the_watermark_only(tmp_path: Path) -> None:
    # 100 events in 25 log messages of 4 (a message holds a group of events).
    log = [(1 + i // 4, dedup_key("web", f"m{i}"), 10_000 + i) for i in range(100)]
    s = DedupSet(tmp_path / "p0", DAY)
    s.add([(key, at) for _, key, at in log[:40]], watermark=10)
    # A set lost with its disk (a fresh directory) rebuilds everything from the log.
    fresh = DedupSet(tmp_path / "other-node", DAY)
    assert fresh.rebuild(log) == 100
    assert fresh.watermark == 25
    assert fresh.filter_new([(key, 20_000) for _, key, _ in log]) == []
    # A set that kept its disk adds only what came after its watermark.
    assert s.rebuild(log) == 60
    assert s.watermark == 25
    s.close()
    fresh.close()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 3 * DAY)),
            max_size=6,
        ),
        max_size=8,
    )
)
def test_filter_new_matches_a_reference_model(batches: list[list[tuple[str, int]]]) -> None:
    """Batches in time order: the set keeps exactly what a dict of id -> time of the
    stored copy keeps (SQLite's rule: the window runs from the stored copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = DedupSet(Path(tmp) / "p0", DAY)
        try:
            _check_against_model(s, batches)
        finally:
            s.close()


def _check_against_model(s: DedupSet, batches: list[list[tuple[str, int]]]) -> None:
    model: dict[str, int] = {}
    clock = 0
    for batch in batches:
        items = []
        for mid, offset in batch:
            clock += offset // 8
            items.append((mid, clock))
        expected = []
        for i, (mid, at) in enumerate(items):
            if mid in model and at - model[mid] < DAY:
                continue
            model[mid] = at
            expected.append(i)
        got = s.filter_new([(dedup_key("web", mid), at) for mid, at in items])
        assert got == expected
        s.add([(dedup_key("web", items[i][0]), items[i][1]) for i in got])


def test_partitions_are_stable_and_spread() -> None:
    # CRC-32, not Python's salted hash: another process (another hash seed) agrees.
    here = [partition_of(f"user-{i}", 16) for i in range(64)]
    code = (
        "from eventd.store.dedup import partition_of as p;"
        "print([p(f'user-{i}', 16) for i in range(64)])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout
    assert there.strip() == str(here)
    counts = [0] * 8
    for i in range(8_000):
        counts[partition_of(f"id-{i}", 8)] += 1
    assert min(counts) > 800 and max(counts) < 1_200
