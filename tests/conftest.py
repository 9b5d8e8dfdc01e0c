"""Shared fixtures: an eventd subprocess factory and sinks, all on real loopback sockets."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EventdProcess, Sink, running

# The contract servers (mixpanel, amplitude, ga4, intercom) and what their tests share;
# a real NATS JetStream cluster for the jetstream store.
pytest_plugins = ["tests.contract.fixtures", "tests.nats_fixtures"]


@pytest.fixture
def eventd(tmp_path: Path) -> Iterator[Callable[..., EventdProcess]]:
    """Start eventd with extra config; every process started is killed at teardown."""
    started: list[EventdProcess] = []

    def start(config: dict[str, Any] | None = None, *, subdir: str = "eventd") -> EventdProcess:
        d = tmp_path / subdir
        d.mkdir(exist_ok=True)
        proc = EventdProcess(d, config).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running(Sink()) as s:
        yield s


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    """More sinks, each on its own port, all stopped at teardown."""
    stack: list[Any] = []

    def make(**kwargs: Any) -> Sink:
        cm = running(Sink(**kwargs))
        stack.append(cm)
        return cm.__enter__()

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: the disk eventd fills. Needs root (CI runs as root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; CI runs as root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
