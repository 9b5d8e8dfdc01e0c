"""The cluster's failures to answer, as :class:`StorageUnavailable`: one mapping for
every cluster module (eventd/store/jetstream.py, cluster.py, cluster_admin.py,
cluster_deletions.py), so each caller (ingest, the admin API) answers 503 +
Retry-After the same way, whichever module asked the cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from nats.errors import Error as NatsError

from eventd.store.base import StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def unavailable(
    *passing: type[Exception],
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """A decorator: the coroutine function's nats errors and timeouts (a lost quorum,
    no answer in time) raised as StorageUnavailable, but those of ``passing`` (nats
    errors the caller reads, such as ``NotFoundError``: a consumer or key that does
    not exist) raised as they are."""

    def decorate(
        method: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except passing:
                raise
            except (NatsError, TimeoutError) as exc:
                raise StorageUnavailable(f"the jetstream cluster did not answer: {exc!r}") from exc

        return call

    return decorate
