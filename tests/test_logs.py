"""eventd/logs.py: every log line is one JSON object, even with many threads logging
at once through both structlog and stdlib ``logging`` (issue 14's trial found one
line holding two records: the identity writer's lease line and the nats client's
error line, from two threads of one process in the same microsecond)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from eventd import logs

THREADS = 8
EACH = 400


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield
    finally:  # this process's other tests log as they did
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


def test_threads_logging_at_once_write_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    path = tmp_path / "out.log"
    # stdout as under PYTHONUNBUFFERED=1 (systemd/eventd.service sets it): every
    # write() is a system call of its own, during which another thread runs.
    with io.TextIOWrapper(path.open("wb", buffering=0), "utf-8", write_through=True) as out:
        monkeypatch.setattr(sys, "stdout", out)
        logs.configure("json", "info")
        start = threading.Barrier(THREADS)

        def run(n: int) -> None:
            own = structlog.get_logger("t")
            library = logging.getLogger("nats.aio.client")
            start.wait()
            for i in range(EACH):
                if (n + i) % 2:
                    own.info("lease taken", thread=n, i=i)
                else:
                    library.error("nats: encountered error thread=%d i=%d", n, i)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seen = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not one JSON object: {line!r}") from None
        if "thread" in record:
            seen.add((record["thread"], record["i"]))
        else:
            words = dict(w.split("=") for w in record["event"].split()[-2:])
            seen.add((int(words["thread"]), int(words["i"])))
    assert seen == {(n, i) for n in range(THREADS) for i in range(EACH)}
