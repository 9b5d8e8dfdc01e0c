"""Leases in the cluster's ``S_LEASES`` bucket: one node at a time per key.

:class:`HeldLeases` is the leases one node holds, by key (any key-value key): a
key is created by the first node that asks (create fails while another holds
it; eventd/store/kv_cas.py, so that two nodes taking a key given back cannot both
succeed on nats-server 2.9), renewed with the revision it was last written at (a renewal fails once
another node took it), and lapses with the bucket's TTL when its holder dies or
stalls; a clean stop gives them back. Its users:

- :class:`PartitionLeases`: the keys ``<prefix>-<p>`` (p in 0..partitions-1), one
  task per partition held: the dedup stages (``dedup-<p>``,
  eventd/store/jetstream.py) and an ordered destination's fetchers
  (``order-<destination>-<p>``, eventd/delivery/worker.py), renewed by the
  store's lease round;
- the cluster store's administrative claims (eventd/store/cluster_admin.py,
  ``aside-<destination>[.<node id>]``; eventd/store/cluster_deletions.py,
  ``erase-<hash>``), renewed by a task of their own (:meth:`HeldLeases.start`).
- the identity writer's ``identity-writer`` (eventd/store/cluster_identity.py),
  taken and renewed on its writer process's connection.

Safety: :meth:`HeldLeases.holds` turns false at ``sent + ttl - LEASE_SLACK`` after
the last renewal that succeeded (``sent``: when it was *sent*; the server counts
the TTL from when it stored it, later), so a holder whose renewals stall stops its
work before any other node can take the key. A partition's task must look at
:meth:`PartitionLeases.holds` before each step it must not share (forwarding a
message, starting a delivery); as a backstop, :meth:`PartitionLeases.claim` stops
the task for sure once a renewal is refused or once the task outlived its lease
(still running after :meth:`HeldLeases.holds` turned false), and starts a new one
only after the old one ended: one task per held partition, never two.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from eventd.store import kv_cas
from eventd.tasks import AGAIN_AFTER, cancel

log = structlog.get_logger("eventd.store.leases")

LEASE_SLACK = 1.0  # seconds a holder stops before its lease could expire on the server

Run = Callable[[int], Coroutine[Any, Any, None]]  # a held partition's work, by p


class HeldLeases:
    """The leases of ``bucket`` this node holds (as ``holder``: the value written),
    by key; ``ttl``: the bucket's, in seconds."""

    def __init__(self, bucket: Callable[[], KeyValue], holder: str, ttl: float) -> None:
        self.bucket = bucket
        self.holder = holder
        self.ttl = ttl
        self._revisions: dict[str, int] = {}  # key -> its lease's last revision
        # key -> time.monotonic() before which the lease is surely still ours
        self._held_until: dict[str, float] = {}
        # key -> how many times a renewal was answered only after the lease had lapsed
        # here (see take): a task started before then may have outlived its lease
        self.lapses: dict[str, int] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def take(self, key: str) -> bool:
        """Create ``key`` (not held) or renew it (held): True while this node holds
        it; False once another node does (ours lapsed and was taken: no longer
        held). Another failure (a stalled cluster, a lost connection) raises and
        leaves the lease as it was."""
        revision = self._revisions.get(key)
        sent = time.monotonic()
        try:
            if revision is None:
                # (a key given back holds a delete marker: nats-py's create would
                # write over it with a check that two nodes can both pass)
                written = await kv_cas.create(self.bucket(), key, self.holder.encode())
            else:
                written = await self.bucket().update(key, self.holder.encode(), last=revision)
        except KeyWrongLastSequenceError:  # held by another node, or ours lapsed
            self._revisions.pop(key, None)
            self._held_until.pop(key, None)
            return False
        if revision is not None and key not in self._revisions:
            # Let go while this renewal ran: the let-go's delete missed this revision.
            with contextlib.suppress(Exception):
                await self.bucket().delete(key, last=written)
            return False
        if time.monotonic() >= self._held_until.get(key, float("inf")):
            # Answered after the local deadline: kept on the server, but its holder's
            # work was told to stop meanwhile (holds() false). A task stuck in an
            # await never looked, and the new deadline hides that it outlived it.
            self.lapses[key] = self.lapses.get(key, 0) + 1
        self._revisions[key] = written
        self._held_until[key] = sent + self.ttl - LEASE_SLACK
        return True

    async def keep(self, key: str) -> bool:
        """:meth:`take` unless held already (then True: the renewals keep it, or drop
        it once lost)."""
        return key in self._revisions or await self.take(key)

    def __contains__(self, key: str) -> bool:
        return key in self._revisions

    def held(self) -> list[str]:
        """The keys held, sorted."""
        return sorted(self._revisions)

    def holds(self, key: str) -> bool:
        """False once ``key``'s lease may have lapsed (see the module docstring)."""
        return time.monotonic() < self._held_until.get(key, 0.0)

    def held_until(self, key: str) -> float | None:
        """The time.monotonic() at which :meth:`holds` turns false (None: not held)."""
        return self._held_until.get(key)

    async def renew(self) -> None:
        """One round: renew every lease held, one after another; one lost is dropped,
        one not answered is tried again at the next round."""
        for key in self.held():
            try:
                await self.take(key)
            except Exception as exc:  # a stalled cluster or a lost connection
                log.info("lease not renewed", lease=key, error=repr(exc))

    def start(self, every: float, name: str) -> None:
        """Renew every ``every`` seconds, in a task of its own, until :meth:`stop`."""
        self._renewer = asyncio.create_task(self._renew_every(every), name=name)

    async def _renew_every(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.renew()

    async def let_go(self, key: str) -> None:
        """Give ``key`` back, so another node takes it now rather than after the TTL
        (never raises: a lease not given back lapses)."""
        revision = self._revisions.pop(key, None)
        self._held_until.pop(key, None)
        if revision is not None:
            with contextlib.suppress(Exception):  # lapsed meanwhile: the TTL frees it
                await self.bucket().delete(key, last=revision)

    async def stop(self, give_back: bool = True) -> None:
        """End the renewals and let every lease go (``give_back`` False: forget them,
        left to the TTL, as when the connection is lost)."""
        await cancel(self._renewer)
        self._renewer = None
        for key in self.held():
            if give_back:
                await self.let_go(key)
        self._revisions.clear()
        self._held_until.clear()


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
        silent_after: float | None = None,
    ) -> None:
        self.bucket = bucket
        self.node_id = node_id
        self.prefix = prefix
        self.partitions = partitions
        self.ttl = ttl
        self.run = run
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # p -> the task stopping p's former task (see claim): none new starts before
        self._ending: dict[int, asyncio.Task[Any]] = {}
        # p -> HeldLeases.lapses of its key when p's task started (see _end_if_outlived)
        self._lapses_at_start: dict[int, int] = {}
        # Watchdog (None: none): a task that has not called beat(p) for this many
        # seconds is stopped and started again, its lease held all along.
        self.silent_after = silent_after
        self._beats: dict[int, float] = {}  # p -> time.monotonic() of its last beat
        # Called with the key of a task stopped as silent (a metric counts it).
        self.on_silent: Callable[[str], None] = lambda key: None
        self.leases = HeldLeases(bucket, node_id, ttl)

    def key(self, p: int) -> str:
        return f"{self.prefix}-{p}"

    def running(self, p: int) -> bool:
        """Whether p's lease is held here and its task runs."""
        task = self.tasks.get(p)
        return task is not None and not task.done() and self.leases.holds(self.key(p))

    async def claim_all(self) -> None:
        """One round: create or renew every partition's lease (all at once: one after
        another, a stalled cluster would make a round outlast the TTL)."""
        await asyncio.gather(*(self.claim(p) for p in range(self.partitions)))

    async def claim(self, p: int) -> None:
        """Create or renew partition p's lease; keep exactly one task for p running
        while it is held: started when held and none runs (none yet, or the last one
        ended, for any reason: its exception was logged when it ended), stopped for
        sure (:func:`eventd.tasks.cancel`, in the background) when not held, or when
        it outlived its lease (below); a new one starts only once the old one ended,
        so two never forward the same partition at once."""
        key = self.key(p)
        self._end_if_outlived(p)
        try:
            held = await self.leases.take(key)
        except Exception as exc:  # a stalled cluster or a lost connection: next round
            log.info("lease not renewed", lease=key, error=repr(exc))
            return
        if not held:  # held by another node, or ours lapsed: stop our task
            self._end(p)
            return
        self._end_if_outlived(p)  # this renewal may have been answered past the deadline
        ending = self._ending.get(p)
        if ending is not None and not ending.done():
            return  # the old task is being stopped: the next round starts the new one
        self._ending.pop(p, None)
        task = self.tasks.get(p)
        if task is None or task.done():
            task = asyncio.create_task(self.run(p), name=f"lease-{key}")
            task.add_done_callback(functools.partial(self._ended, key))
            self.tasks[p] = task
            self._lapses_at_start[p] = self.leases.lapses.get(key, 0)
            self._beats[p] = time.monotonic()

    def beat(self, p: int) -> None:
        """Partition p's task says it is making progress (see ``silent_after``)."""
        self._beats[p] = time.monotonic()

    def _end_if_outlived(self, p: int) -> None:
        """Stop partition p's task if it still runs after its lease lapsed here: now
        (:meth:`HeldLeases.holds` false) or at any moment since it started (a renewal
        answered past the local deadline: :attr:`HeldLeases.lapses`; it renews the
        deadline, so a round that comes after it sees the lease held). The task
        should have stopped at its own lease check, but it is stuck in an await (a
        fetch nobody answers, a cancellation swallowed by Python 3.11's wait_for).
        Left alone, the renewed lease is held with nothing running behind it (seen:
        acknowledged events held for good; and in CI, a renewal stalled past the
        deadline, answered, and the next round a moment too early to see it)."""
        key = self.key(p)
        task = self.tasks.get(p)
        if task is None or task.done():
            return
        lapsed = self.leases.lapses.get(key, 0) != self._lapses_at_start.get(p, 0)
        if lapsed or not self.leases.holds(key):
            log.warning("partition task outlived its lease; stopping it", lease=key)
            self._end(p)
            return
        silent = time.monotonic() - self._beats.get(p, time.monotonic())
        if self.silent_after is not None and silent > self.silent_after:
            # Held, renewed, and doing nothing (issue 14's fourth trial: after a quorum
            # loss three partitions' stages stood still for 4.5 minutes, and one until
            # the cluster was stopped, with no line logged): stuck in an await that
            # neither ends nor looks at the lease. Stopped; the next round starts one.
            log.error(
                "partition task made no progress; stopping it", lease=key, seconds=round(silent)
            )
            self.on_silent(key)
            self._end(p)

    def _end(self, p: int) -> None:
        """Stop partition p's task for sure, without holding up the lease round (a
        task stuck in a thread ends only when the thread returns)."""
        task = self.tasks.pop(p, None)
        if task is not None and not task.done():
            self._ending[p] = asyncio.create_task(cancel(task), name=f"end-{self.key(p)}")

    @staticmethod
    def _ended(key: str, task: asyncio.Task[None]) -> None:
        """Log, once, how a partition's task ended if it failed (retrieving its
        exception: never asyncio's "Task exception was never retrieved")."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "partition task failed; restarted while its lease is held", lease=key, exc_info=exc
            )

    def held(self) -> list[int]:
        """The partitions whose task runs here now, sorted."""
        return sorted(p for p, t in self.tasks.items() if not t.done())

    def live(self) -> list[asyncio.Task[Any]]:
        """Every task of these partitions not ended yet: those running and those
        being stopped (close() waits for them all)."""
        return [t for t in (*self.tasks.values(), *self._ending.values()) if not t.done()]

    def holds(self, p: int) -> bool:
        """False once partition p's lease may have lapsed (see the module docstring)."""
        return self.leases.holds(self.key(p))

    def held_until(self, p: int) -> float | None:
        """The time.monotonic() at which :meth:`holds` turns false (None: not held)."""
        return self.leases.held_until(self.key(p))

    async def stop(self, within: float) -> None:
        """Give the tasks ``within`` s in all: they end by themselves (their owner told
        them to) until :data:`eventd.tasks.AGAIN_AFTER` before its end (half of it at
        least), then those still running are cancelled (:func:`eventd.tasks.cancel`)
        until its end, and left if they outlive it (a task stuck in a thread); no new
        one starts after this."""
        self.run = _stopped
        tasks = self.live()
        if tasks:
            grace = max(within - AGAIN_AFTER, within / 2)
            _, late = await asyncio.wait(tasks, timeout=grace)
            await cancel(*late, within=within - grace)
        self.tasks.clear()
        self._ending.clear()

    async def let_go(self) -> None:
        """Give the leases back, so another node takes the partitions now rather than
        after the TTL (a clean stop); failures are left to the TTL."""
        await self.leases.stop()


async def _stopped(p: int) -> None:
    """The task of a partition claimed after :meth:`PartitionLeases.stop`: none."""
