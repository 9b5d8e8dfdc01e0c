"""Partition leases in the cluster's ``S_LEASES`` bucket: one node at a time per partition.

A :class:`PartitionLeases` bids for the keys ``<prefix>-<p>`` (p in 0..partitions-1)
and runs one task per partition it holds: the dedup stages (``dedup-<p>``,
eventd/store/jetstream.py) and an ordered destination's fetchers
(``order-<destination>-<p>``, eventd/delivery/worker.py). A key is created by the
first node that asks (create fails while another holds it), renewed with the
revision it was last written at (a renewal fails once another node took it),
and lapses with the bucket's TTL when its holder dies or stalls.

Safety: :meth:`PartitionLeases.holds` turns false at ``sent + ttl - LEASE_SLACK``
after the last renewal that succeeded (``sent``: when it was *sent*; the server
counts the TTL from when it stored it, later), so a holder whose renewals stall
stops its work before any other node can take the partition. The task itself
must look at :meth:`holds` before each step it must not share (forwarding a
message, starting a delivery); a renewal refused cancels the task as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger("eventd.store.leases")

LEASE_SLACK = 1.0  # seconds a holder stops before its lease could expire on the server

Run = Callable[[int], Coroutine[Any, Any, None]]  # a held partition's work, by p


class PartitionLeases:
    """Leases ``<prefix>-<p>`` for ``partitions`` partitions, held by ``node_id``,
    with ``run(p)`` running while p is held (started again if it ended)."""

    def __init__(
        self,
        bucket: Callable[[], KeyValue],
        node_id: str,
        prefix: str,
        partitions: int,
        ttl: float,
        run: Run,
    ) -> None:
        self.bucket = bucket
        self.node_id = node_id
        self.prefix = prefix
        self.partitions = partitions
        self.ttl = ttl
        self.run = run
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._revisions: dict[int, int] = {}  # partition -> its lease's last revision
        # partition -> time.monotonic() before which the lease is surely still ours
        self._held_until: dict[int, float] = {}

    def key(self, p: int) -> str:
        return f"{self.prefix}-{p}"

    async def claim_all(self) -> None:
        """One round: create or renew every partition's lease (all at once: one after
        another, a stalled cluster would make a round outlast the TTL)."""
        await asyncio.gather(*(self.claim(p) for p in range(self.partitions)))

    async def claim(self, p: int) -> None:
        """Create or renew partition p's lease; start its task when held."""
        revisions = self._revisions
        task = self.tasks.get(p)
        sent = time.monotonic()
        try:
            if p in revisions:
                revisions[p] = await self.bucket().update(
                    self.key(p), self.node_id.encode(), last=revisions[p]
                )
            else:
                revisions[p] = await self.bucket().create(self.key(p), self.node_id.encode())
        except KeyWrongLastSequenceError:
            # Held by another node, or ours lapsed: stop our task.
            revisions.pop(p, None)
            self._held_until.pop(p, None)
            if task is not None:
                task.cancel()
                self.tasks.pop(p, None)
            return
        except Exception as exc:  # a stalled cluster or a lost connection: next round
            log.info("lease not renewed", lease=self.key(p), error=repr(exc))
            return
        self._held_until[p] = sent + self.ttl - LEASE_SLACK
        if task is None or task.done():
            self.tasks[p] = asyncio.create_task(self.run(p), name=f"lease-{self.key(p)}")

    def held(self) -> list[int]:
        """The partitions whose task runs here now, sorted."""
        return sorted(p for p, t in self.tasks.items() if not t.done())

    def holds(self, p: int) -> bool:
        """False once partition p's lease may have lapsed (see the module docstring)."""
        return time.monotonic() < self._held_until.get(p, 0.0)

    def held_until(self, p: int) -> float | None:
        """The time.monotonic() at which :meth:`holds` turns false (None: not held)."""
        return self._held_until.get(p)

    async def stop(self, within: float) -> None:
        """Wait up to ``within`` s for the tasks to end (their owner told them to),
        then cancel those still running; no new one starts after this."""
        self.run = _stopped
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=within)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=within)
        self.tasks.clear()

    async def let_go(self) -> None:
        """Give the leases back, so another node takes the partitions now rather than
        after the TTL (a clean stop); failures are left to the TTL."""
        for p, revision in sorted(self._revisions.items()):
            with contextlib.suppress(Exception):  # lost meanwhile: the TTL frees it
                await self.bucket().delete(self.key(p), last=revision)
        self._revisions.clear()
        self._held_until.clear()


async def _stopped(p: int) -> None:
    """The task of a partition claimed after :meth:`PartitionLeases.stop`: none."""
