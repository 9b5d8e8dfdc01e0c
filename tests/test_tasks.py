"""eventd.tasks: cancel() stops a task that swallows a cancellation (as one awaiting
nats-py's ``asyncio.wait_for`` can in Python 3.11), or gives up after ``within``;
finish() runs a step for a bounded time."""

from __future__ import annotations

import asyncio

import pytest

from eventd.tasks import cancel, finish


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


async def test_cancel_within_gives_up_on_a_task_that_will_not_end() -> None:
    # A task that swallows every cancellation (as one stuck in a thread does):
    # cancel(within=) returns False after ``within`` seconds, having cancelled it again
    # each AGAIN_AFTER; a task given with it ends.
    swallowed: list[str] = []
    stubborn_now = True

    async def swallows() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if not stubborn_now:
                    raise
                swallowed.append("swallowed")

    stubborn = asyncio.create_task(swallows())
    plain = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cancel(stubborn, plain, within=1.5) is False
    assert 1.5 <= loop.time() - started < 2.5
    assert plain.cancelled() and not stubborn.done() and len(swallowed) == 2
    stubborn_now = False
    assert await cancel(stubborn, within=1.5) is True
    assert stubborn.cancelled()


async def test_finish_ends_a_step_in_time_or_cuts_it_short() -> None:
    async def quick() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise ValueError("raised as awaiting it would")

    async def forever() -> None:
        await asyncio.Event().wait()

    assert await finish(quick(), 1.0) is True
    with pytest.raises(ValueError, match="as awaiting it would"):
        await finish(fails(), 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await finish(forever(), 0.3) is False
    assert 0.3 <= loop.time() - started < 1.3
