"""``python -m bench.kv_cas --rounds N``: does a key-value compare-and-set hold?

On demand, not in CI (tests/test_kv_cas.py asserts the outcome on fewer rounds).
A 3-server cluster of this machine's nats-server and a replicated (R3) bucket; two
clients, each connected to a different server, as two eventd nodes are. Each round
both write one key at the same moment, expecting the same revision; a compare-and-
set holds when exactly one of the two writes is stored. Printed per way of writing:
the rounds in which *both* were stored (each a lost update), out of ``--rounds``
(and those in which neither was: a compare-and-set that refuses too much):

- nats-py's ``KeyValue.update``: ``Nats-Expected-Last-Subject-Sequence`` alone,
  checked on the leader before the write is proposed (nats-server issue #4320);
- ``KeyValue.create`` on a new key: revision 0;
- nats-py's ``KeyValue.create`` over a delete marker (a lease given back): it falls
  back to ``update`` on the marker's revision;
- eventd/store/kv_cas.py's ``update`` and ``create`` (over a marker).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from eventd.store import kv_cas
from tests.nats_cluster import NatsCluster, nats_server_binary

Write = Callable[[KeyValue, str, bytes, int], Awaitable[int]]


async def _plain_update(kv: KeyValue, key: str, value: bytes, last: int) -> int:
    return await kv.update(key, value, last=last)


async def _plain_create(kv: KeyValue, key: str, value: bytes, last: int) -> int:
    return await kv.create(key, value)


async def _cas_create(kv: KeyValue, key: str, value: bytes, last: int) -> int:
    return await kv_cas.create(kv, key, value)


# name -> (how the key is before the round, the write)
WAYS: dict[str, tuple[str, Write]] = {
    "nats-py update": ("value", _plain_update),
    "nats-py create, new key": ("none", _plain_create),
    "nats-py create, over a delete": ("deleted", _plain_create),
    "kv_cas.update": ("value", kv_cas.update),
    "kv_cas.create, over a delete": ("deleted", _cas_create),
}


async def _stored(write: Write, kv: KeyValue, key: str, value: bytes, last: int) -> bool:
    try:
        await write(kv, key, value, last)
    except KeyWrongLastSequenceError:
        return False
    return True


async def race(
    kvs: list[KeyValue], rounds: int, prefix: str, before: str, write: Write
) -> tuple[int, int]:
    """(rounds in which both clients' writes were stored, rounds with neither) of
    ``rounds``, each on a key of its own (``prefix`` + round), ``before`` as in WAYS."""
    both = neither = 0
    for r in range(rounds):
        key = f"{prefix}{r}"
        last = 0
        if before != "none":
            last = await kvs[0].create(key, b"0")
        if before == "deleted":
            await kvs[0].delete(key, last=last)
        stored = await asyncio.gather(
            *(
                _stored(write, kv, key, value, last)
                for kv, value in zip(kvs, (b"a", b"b"), strict=True)
            )
        )
        both += all(stored)
        neither += not any(stored)
    return both, neither


async def run(cluster: NatsCluster, rounds: int) -> None:
    ncs = [await nats.connect(url) for url in cluster.urls[:2]]
    try:
        first = ncs[0].jetstream()
        await first.create_key_value(KeyValueConfig(bucket="CAS", history=1, replicas=3))
        kvs = [await nc.jetstream().key_value("CAS") for nc in ncs]
        print("| way of writing | rounds | both stored | neither |\n|---|---|---|---|")
        for n, (name, (before, write)) in enumerate(WAYS.items()):
            both, neither = await race(kvs, rounds, f"w{n}-", before, write)
            print(f"| {name} | {rounds} | {both} | {neither} |")
    finally:
        for nc in ncs:
            await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    binary = nats_server_binary()
    assert binary is not None, "nats-server is not installed (.ci/nats-setup.sh)"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    print(f"{version.strip()}, 3 servers, an R3 bucket, two clients on two servers")
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(Path(tmp)).start() as cluster:
        asyncio.run(run(cluster, args.rounds))


if __name__ == "__main__":
    main()
