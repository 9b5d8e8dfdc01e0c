"""Stopping asyncio tasks for sure: :func:`cancel` cancels until a task has ended.

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
from typing import Any

AGAIN_AFTER = 1.0  # seconds a cancelled task is given before it is cancelled again


async def cancel(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each task given (None: skipped) and wait until it has ended, cancelling
    it again every :data:`AGAIN_AFTER` seconds while it runs. Never raises: a task's
    own exception stays on it (read it with ``task.exception()``)."""
    for task in tasks:
        if task is None:
            continue
        while not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=AGAIN_AFTER)
        if not task.cancelled():
            task.exception()  # retrieved: not logged as "never retrieved"
