"""ClusterFeed's bookkeeping without a cluster: spans cut across log messages settle
in any order, and a log message is acked once, only when every event of it is
settled; close() gives back (NAKs) what is not settled.

The consumer itself is faked (its reader); tests/test_cluster_serve.py runs the
same feed on a real 3-server cluster."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from eventd.config import JetStreamConfig, StorageConfig
from eventd.store.cluster import EVENT_BITS, ClusterFeed, ClusterStore
from eventd.store.jetstream import DestinationReader, LogEvent


class FakeMsg:
    def __init__(self, seq: int) -> None:
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq))
        self.naks = 0

    async def nak(self) -> None:
        self.naks += 1


class FakeReader:
    """Hands out the given batches of (message, events) once, then nothing."""

    def __init__(self, batches: list[list[tuple[FakeMsg, list[LogEvent]]]]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def fetch(self, max_messages: int, wait: float = 1.0) -> list[Any]:
        return self.batches.pop(0) if self.batches else []

    async def settle(self, msg: FakeMsg) -> None:
        self.acked.append(msg.metadata.sequence.stream)


def group(seq: int, n: int) -> tuple[FakeMsg, list[LogEvent]]:
    return FakeMsg(seq), [
        LogEvent(seq, i, "web", f"m{seq}-{i}", "u", 1000, b"{}") for i in range(n)
    ]


def feed_over(reader: FakeReader) -> ClusterFeed:
    store = ClusterStore(StorageConfig(backend="jetstream", jetstream=JetStreamConfig()), ["d"])
    feed = ClusterFeed(store, "d", None)
    feed.reader = cast(DestinationReader, reader)
    return feed


async def test_spans_across_messages_settle_in_any_order_and_ack_each_message_once() -> None:
    reader = FakeReader([[group(7, 3), group(9, 2)]])
    feed = feed_over(reader)
    events = await feed.fetch(1000)
    seqs = [e.seq for e in events]
    assert seqs == [7 << EVENT_BITS | i for i in range(3)] + [9 << EVENT_BITS | i for i in range(2)]
    assert [e.user_id for e in events] == ["u"] * 5
    a = feed.cut(seqs[1])  # 2 events of message 7
    b = feed.cut(seqs[3])  # the last of 7, the first of 9
    c = feed.cut(seqs[4])  # the last of 9
    empty = feed.cut(seqs[4])  # nothing left to cut: settles nothing
    assert feed.unsettled and feed.position == (7 << EVENT_BITS) - 1

    await feed.settle(b)
    assert reader.acked == []  # 7 has 2 events unsettled, 9 has 1
    await feed.settle(empty)
    await feed.settle(c)
    assert reader.acked == [9]
    assert feed.position == (7 << EVENT_BITS) - 1  # 7 is still held
    await feed.settle(a)
    assert reader.acked == [9, 7]
    assert not feed.unsettled and feed.position == seqs[-1]
    assert feed.wakeup.is_set()  # nothing held: the worker may say it is idle

    assert await feed.fetch(1000) == [] and feed.wakeup.is_set()  # long poll done: look again


async def test_close_naks_what_is_not_settled_so_another_node_takes_it_now() -> None:
    m1, e1 = group(3, 2)
    m2, e2 = group(4, 1)
    reader = FakeReader([[(m1, e1), (m2, e2)]])
    feed = feed_over(reader)
    events = await feed.fetch(1000)
    await feed.settle(feed.cut(events[1].seq))  # message 3 done
    feed.cut(events[2].seq)  # message 4 cut, never settled
    await feed.close()
    assert reader.acked == [3]
    assert (m1.naks, m2.naks) == (0, 1)
    assert not feed.unsettled


def test_the_position_before_the_first_log_message_is_0() -> None:
    """A destination that has passed nothing (ack floor 0, settled below log seq 1)
    is at 0, as on SQLite, not at 1048575 (a trial's `eventd status` for a down
    destination); below log seq 2, at the last event seq of log message 1."""
    feed = feed_over(FakeReader([]))
    assert feed.position == 0
    feed._settled_below = 1
    assert feed.position == 0
    feed._settled_below = 2
    assert feed.position == (1 << EVENT_BITS) | (2**EVENT_BITS - 1)
