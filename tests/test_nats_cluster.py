"""The test cluster itself: three real nats-servers form one JetStream cluster whose
R3 streams keep taking and serving messages with one server killed, and the killed
server rejoins. Guards the harness every jetstream-store test stands on."""

from __future__ import annotations

import time
from collections.abc import Callable

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from tests.nats_cluster import NatsCluster


async def publish(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> PubAck:
    """Publish, retrying with the same message id while the stream has no leader
    (an election after a kill stalls publishing for a few seconds)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=2)
        except (NoStreamResponseError, NatsTimeoutError):
            if time.monotonic() > deadline:
                raise


async def test_r3_stream_survives_one_server_and_the_server_rejoins(
    make_nats_cluster: Callable[..., NatsCluster],
) -> None:
    cluster = make_nats_cluster(3)
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="HARNESS", subjects=["harness.>"], num_replicas=3))
        info = await js.stream_info("HARNESS")
        assert info.cluster is not None and info.cluster.leader is not None
        assert len(info.cluster.replicas or []) == 2

        before = [await publish(js, "harness.a", f"m{i}".encode(), f"m{i}") for i in range(10)]
        assert [a.seq for a in before] == list(range(1, 11))

        # Kill the stream's leader: the two others elect one and keep a quorum.
        leader = int(info.cluster.leader.removeprefix("n"))
        cluster.kill(leader)
        after = [await publish(js, "harness.a", f"m{i}".encode(), f"m{i}") for i in range(10, 20)]
        assert [a.seq for a in after] == list(range(11, 21))

        cluster.restart(leader)
        sub = await js.pull_subscribe("harness.a", durable="reader", stream="HARNESS")
        got: list[bytes] = []
        while len(got) < 20:
            msgs = await sub.fetch(20, timeout=10)
            for m in msgs:
                await m.ack()
            got += [m.data for m in msgs]
        assert got == [f"m{i}".encode() for i in range(20)]
    finally:
        await nc.close()
