"""eventd/store/cluster_errors.py: the cluster's failures to answer become
StorageUnavailable (503 + Retry-After to the caller); the nats errors a caller
reads (``passing``) come through as they are."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError, ServiceUnavailableError

from eventd.store import StorageUnavailable
from eventd.store.cluster_errors import unavailable


@pytest.mark.parametrize(
    "exc", [TimeoutError(), NatsTimeout(), ServiceUnavailableError(), NotFoundError()]
)
async def test_the_cluster_not_answering_is_storage_unavailable(exc: Exception) -> None:
    @unavailable()
    async def ask() -> None:
        raise exc

    with pytest.raises(StorageUnavailable, match="the jetstream cluster did not answer") as got:
        await ask()
    assert got.value.__cause__ is exc


async def test_errors_passed_through_are_raised_as_they_are() -> None:
    @unavailable(NotFoundError)
    async def ask(what: Exception) -> int:
        raise what

    with pytest.raises(NotFoundError):
        await ask(NotFoundError())
    with pytest.raises(StorageUnavailable):
        await ask(ServiceUnavailableError())
    with pytest.raises(ValueError):  # not the cluster's: a defect, raised as it is
        await ask(ValueError("x"))


async def test_a_result_comes_back_unchanged() -> None:
    @unavailable()
    async def ask(n: int) -> int:
        return n + 1

    assert await ask(1) == 2
