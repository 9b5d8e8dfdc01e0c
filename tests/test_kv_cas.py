"""eventd/store/kv_cas.py on a real 3-server cluster: two clients on two servers
write one key at the same moment, expecting the same revision, and exactly one
write is stored, every round. nats-py's own ``update`` (and its ``create`` over a
delete marker) let both through on Debian's nats-server 2.9.10 (nats-server issue
#4320; ``python -m bench.kv_cas`` measures how often): these tests fail with them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bench.kv_cas import _cas_create, race
from eventd.store import kv_cas
from eventd.store.leases import HeldLeases
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.slow

ROUNDS = 40  # nats-py's update lost an update in 133-260 of 300 rounds here


@pytest.fixture
async def kvs(
    nats_cluster: NatsCluster, request: pytest.FixtureRequest
) -> AsyncIterator[list[KeyValue]]:
    """One R3 bucket, bound by two clients connected to two different servers."""
    ncs = [await nats.connect(url) for url in nats_cluster.urls[:2]]
    bucket = f"CAS_{request.node.name.removeprefix('test_')[:40]}".replace("-", "_")
    await ncs[0].jetstream().create_key_value(KeyValueConfig(bucket=bucket, replicas=3))
    yield [await nc.jetstream().key_value(bucket) for nc in ncs]
    for nc in ncs:
        await nc.close()


async def test_two_updates_from_one_revision_store_exactly_one(kvs: list[KeyValue]) -> None:
    assert await race(kvs, ROUNDS, "u", "value", kv_cas.update) == (0, 0)


async def test_two_creates_over_a_delete_marker_store_exactly_one(kvs: list[KeyValue]) -> None:
    """A lease given back leaves a delete marker; two nodes then take it at once."""
    assert await race(kvs, ROUNDS, "c", "deleted", _cas_create) == (0, 0)


async def test_create_update_and_delete_keep_the_bucket_s_meaning(kvs: list[KeyValue]) -> None:
    kv = kvs[0]
    first = await kv_cas.create(kv, "k", b"1")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv_cas.create(kv, "k", b"2")  # holds a value
    second = await kv_cas.update(kv, "k", b"2", last=first)
    with pytest.raises(KeyWrongLastSequenceError):
        await kv_cas.update(kv, "k", b"3", last=first)  # not the last revision
    await kv.put("other", b"x")  # another key's write before: no conflict
    third = await kv_cas.update(kv, "k", b"3", last=second)
    entry = await kv.get("k")
    assert (entry.value, entry.revision) == (b"3", third)
    with pytest.raises(KeyWrongLastSequenceError):
        await kv_cas.delete(kv, "k", last=second)
    marker = await kv_cas.delete(kv, "k", last=third)
    assert marker > third
    again = await kv_cas.create(kv, "k", b"4")
    entry = await kvs[1].get("k")
    assert (entry.value, entry.revision) == (b"4", again)


async def test_a_lease_given_back_is_taken_by_one_node_of_two(kvs: list[KeyValue]) -> None:
    """eventd/store/leases.py: a node's clean stop gives its leases back (a delete
    marker); two nodes asking at once must not both hold one (two dedup stages, or
    two identity writers, at once)."""
    first, second = (HeldLeases(lambda kv=kv: kv, f"n{i}", ttl=60.0) for i, kv in enumerate(kvs))
    giver = HeldLeases(lambda: kvs[0], "giver", ttl=60.0)
    for r in range(ROUNDS):
        key = f"dedup-{r}"
        assert await giver.take(key)
        await giver.let_go(key)
        taken = await asyncio.gather(first.take(key), second.take(key))
        assert sorted(taken) == [False, True], key
        held_by = (await kvs[1].get(key)).value
        assert held_by == (b"n0" if taken[0] else b"n1")
