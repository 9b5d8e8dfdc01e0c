"""Dispatcher.delete_user: what the privacy feature asks a destination through,
over the in-memory store: the plugin's answer as it is, a plugin that raises as a
Retry naming the error, the default for a plugin without delete_user, and an
unknown destination refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from eventd import OK, DeletionOutcome, Destination, Erasure, Event, Outcome, Retry, Unsupported
from eventd.config import parse_config
from eventd.delivery.dispatcher import Dispatcher, UnknownDestination
from eventd.metrics import Metrics
from eventd.store import MemoryStore


class Deleter(Destination):
    type_name = "deleter"
    asked: list[Erasure] = []

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        return OK

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        self.asked.append(erasure)
        return OK


class Raiser(Deleter):
    type_name = "raiser"

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        raise KeyError("user_ids")


class Plain(Deleter):
    """A destination that says nothing about deleting: the base class's default."""

    type_name = "plain"
    delete_user = Destination.delete_user


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    config = parse_config(
        {
            "destinations": {
                "ok": {"type": "deleter", "rate_limit": 1000},
                "bug": {"type": "raiser"},
                "plain": {"type": "plain"},
            }
        },
        "test",
    )
    store = MemoryStore()
    await store.open()
    types: dict[str, type[Destination]] = {"deleter": Deleter, "raiser": Raiser, "plain": Plain}
    d = Dispatcher(config, types, store, Metrics())
    await d.start()
    yield d
    await d.stop(0)
    await store.close()


async def test_delete_user_asks_the_plugin_and_answers_as_it_does(dispatcher: Dispatcher) -> None:
    erasure = Erasure(("u1", "u2"), ("anon-1",))
    Deleter.asked.clear()
    assert await dispatcher.delete_user("ok", erasure) == OK
    assert Deleter.asked == [erasure]
    assert await dispatcher.delete_user("bug", erasure) == Retry(
        "delete_user raised KeyError: 'user_ids'"
    )
    assert await dispatcher.delete_user("plain", erasure) == Unsupported(
        "the plain destination cannot delete through its API: delete the user's data in"
        " plain by hand"
    )
    with pytest.raises(UnknownDestination):
        await dispatcher.delete_user("nope", erasure)
    assert Deleter.asked == [erasure]
