"""Stopping asyncio tasks for sure: :func:`cancel` cancels until a task has ended
(or a bound ran out); :class:`Budget` shares one bound out between a stop's steps.

Why once is not enough: in Python 3.11, ``asyncio.wait_for`` drops a cancellation
that arrives in the loop iteration in which the awaited future completes
(python/cpython#86296, fixed in 3.12 by the rewrite of ``wait_for`` over
``asyncio.timeout``). nats-py awaits its requests, fetches and connects through
``wait_for``, so a task stopped mid-request can swallow its ``cancel()`` and go on
looping; its owner's ``close()`` then waited for it forever (seen under load: a
cluster store's health loop, in tests/store/test_deletions.py's restart test).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

AGAIN_AFTER = 1.0  # seconds a cancelled task is given before it is cancelled again


async def cancel(*tasks: asyncio.Future[Any] | None, within: float | None = None) -> bool:
    """Cancel each task given (None: skipped) and wait until it has ended, cancelling
    it again every :data:`AGAIN_AFTER` seconds while it runs; ``within``: give up
    after that many seconds in all (None: wait as long as it takes). True when every
    task has ended; False when ``within`` ran out first (those still running stay
    cancelled, and are cancelled again by nobody: a task stuck in a thread ends when
    the thread returns). Never raises: a task's own exception stays on it (read it
    with ``task.exception()``)."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    running = {task for task in tasks if task is not None}
    while True:
        for task in running:
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: not logged as "never retrieved"
            else:
                task.cancel()
        running = {task for task in running if not task.done()}
        if not running:
            return True
        wait = AGAIN_AFTER if deadline is None else min(AGAIN_AFTER, deadline - loop.time())
        if wait <= 0:
            return False
        await asyncio.wait(running, timeout=wait)


async def finish(coro: Coroutine[Any, Any, None], within: float) -> bool:
    """Run ``coro`` for up to ``within`` seconds, then stop it (:func:`cancel`, a
    further :data:`AGAIN_AFTER` at most): True when it ended in time (raising its
    exception, if it failed, as awaiting it would), False when it was cut short.
    Unlike ``asyncio.wait_for``, a cancellation it swallows cannot hold the caller."""
    task = asyncio.ensure_future(coro)
    await asyncio.wait((task,), timeout=max(0.0, within))
    if task.done():
        task.result()
        return True
    await cancel(task, within=AGAIN_AFTER)
    return False


class Budget:
    """``seconds`` for a stop of several steps (a close: stop tasks, give leases back,
    disconnect), shared out as it goes: a step that ends early leaves its rest to the
    next ones, and the last step ends by the deadline whatever those before took."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self, floor: float = 0.0) -> float:
        """Seconds to the deadline (at least ``floor``: a step that must be tried,
        such as closing a connection)."""
        return max(floor, self.deadline - time.monotonic())

    def share(self, steps: int) -> float:
        """The next step's share when ``steps`` steps (it included) are left."""
        return self.left() / steps
