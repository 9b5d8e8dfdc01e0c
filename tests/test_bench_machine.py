"""bench's core plan: which cores the server under test gets, and the load side."""

from __future__ import annotations

import os

import pytest

from bench import machine


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


@pytest.mark.usefixtures("four_cores")
@pytest.mark.parametrize(
    ("server", "server_cores", "load_cores", "shared"),
    [
        (1, {0}, {1, 2, 3}, False),
        (3, {0, 1, 2}, {3}, False),
        (4, {0, 1, 2, 3}, {3}, True),  # none left: the load side shares the last core
        (9, {0, 1, 2, 3}, {3}, True),
    ],
)
def test_the_server_gets_the_first_cores_and_the_load_side_the_rest(
    server: int, server_cores: set[int], load_cores: set[int], shared: bool
) -> None:
    cores = machine.plan_cores(server)
    assert (cores.server, cores.load) == (frozenset(server_cores), frozenset(load_cores))
    assert cores.describe().endswith("(shared)") == shared


def test_one_core_is_not_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not machine.plan_cores(2).pinned
