"""The benchmark harness must not rot: its smoke mode runs end to end and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_smoke_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-wrk"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("ceiling A", "/v1/batch", "delivery", "e2e latency p99", "RSS"):
        assert row in done.stdout, row
    assert "| target | goal | median | met |" in done.stdout


def test_reports_bench_smoke_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.reports", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("duckdb load", "funnel (4 steps, 1d)", "retention (14 days)"):
        assert row in done.stdout, row


def test_hotpath_bench_prints_every_stage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--requests", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures) == {"parse", "rows", "store", "track", "total_batch"}
    assert all(value > 0 for value in figures.values()), figures


def test_second_core_prototype_bench_prints_its_three_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.second_core", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("| eventd, 1 core |", "| eventd, every core |", "| 2 fronts + 1 writer, every"):
        assert row in done.stdout, row
