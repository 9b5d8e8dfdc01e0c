"""eventd.tasks.cancel: a task that swallows a cancellation (as one awaiting nats-py's
``asyncio.wait_for`` can in Python 3.11) is still stopped."""

from __future__ import annotations

import asyncio

from eventd.tasks import cancel


async def _swallows_first_cancel(log: list[str]) -> None:
    """Loses the first cancellation, as a task mid-request in 3.11 can."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append("swallowed")
    await asyncio.Event().wait()  # goes on, as the health loop did


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    log: list[str] = []
    task = asyncio.create_task(_swallows_first_cancel(log))
    await asyncio.sleep(0)  # let it reach its first wait
    task.cancel()  # once, as before
    done, _ = await asyncio.wait((task,), timeout=0.2)
    assert not done and log == ["swallowed"]  # a single cancel() would wait forever
    await cancel(task)
    assert task.cancelled()


async def test_cancel_skips_none_and_keeps_a_finished_task_s_exception() -> None:
    async def fails() -> None:
        raise ValueError("kept")

    task = asyncio.create_task(fails())
    await asyncio.wait((task,))
    await cancel(None, task)  # no raise
    assert isinstance(task.exception(), ValueError)
