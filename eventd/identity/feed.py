"""Warehouse feeds: identity links sent to every destination that stores them.

A destination whose class has ``async def write_identities(links:
Sequence[IdentityLink]) -> None`` (the postgres and duckdb warehouses: an upsert
on (anonymous_id, user_id), see :mod:`eventd.identity.links`) gets every link the
graph makes, in the graph's link order (each row's ``version``), and again every
row of a profile whose ``profile_id`` a merge changed. Its position (the last
version it stored) is kept in identity.db, so links survive restarts; a failed
write is retried with backoff and never skipped: a link is never lost.

On the cluster (a shared graph) the writer's node runs the feeds, their positions
kept in the cluster; a node-local destination's feed (duckdb: a file on each node)
runs on every node into that node's data instead, from version 0 at each start
(``save`` None: the position is this process's alone, since it is only as good as
the node's file; the upsert makes sending a link again harmless).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from eventd.identity.links import IdentityLink
from eventd.store.base import IdentityBackend

log = structlog.get_logger("eventd.identity.feed")

PAGE_LINKS = 1000
BACKOFF_MAX = 60.0

WriteIdentities = Callable[[Sequence[IdentityLink]], Awaitable[None]]


def writer_of(destination: Any) -> WriteIdentities | None:
    """The destination's ``write_identities`` method, when its class has one."""
    method = getattr(type(destination), "write_identities", None)
    return getattr(destination, "write_identities") if callable(method) else None  # noqa: B009


class LinkFeed:
    """Sends links to one destination, after its position."""

    def __init__(
        self,
        name: str,
        write: WriteIdentities,
        store: IdentityBackend,
        save: Callable[[str, int], Awaitable[None]] | None,
        *,
        node_local: bool = False,
    ) -> None:
        self.name = name
        self.write = write
        self.store = store  # read: links after the position
        # write: the position, through the identity writer; None: kept here, from 0
        self.save = save
        self.node_local = node_local  # the destination's data is on this node (duckdb)
        self.position = 0
        self.sent = 0  # links stored by the destination since start
        self.failures = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if self.save is not None:
            self.position = await self.store.read(self.store.position, self.name)
        attempt = 0
        while not self._stop.is_set():
            self._wake.clear()
            page = await self.store.read(self.store.links_after, self.position, PAGE_LINKS)
            if not page:
                await self._pause(None)
                continue
            try:
                await self.write([link for _, link in page])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the warehouse is down or refused: retry, never skip
                attempt += 1
                self.failures += 1
                log.warning(
                    "identities not stored; will retry",
                    destination=self.name,
                    links=len(page),
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                await self._pause(
                    min(BACKOFF_MAX, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1)
                )
                continue
            attempt = 0
            self.position = page[-1][0]
            self.sent += len(page)
            if self.save is not None:
                await self.save(self.name, self.position)

    async def _pause(self, seconds: float | None) -> None:
        await pause(self._stop, self._wake, seconds)


async def pause(stop: asyncio.Event, wake: asyncio.Event, seconds: float | None) -> None:
    """Until ``stop`` is set, or ``wake`` when ``seconds`` is None, else ``seconds`` pass
    (a retry's backoff, which only stopping cuts short)."""
    waits = {asyncio.ensure_future(stop.wait())}
    if seconds is None:
        waits.add(asyncio.ensure_future(wake.wait()))
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
