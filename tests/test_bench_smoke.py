"""The benchmark harness must not rot: its smoke mode runs end to end and prints its table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str) -> str:
    """Run ``python -m ARGS`` from the repository's root; its stdout, after a 0 exit."""
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_smoke_prints_the_table() -> None:
    stdout = _run("bench", "--smoke", "--no-wrk")
    for row in ("ceiling A", "/v1/batch", "delivery", "e2e latency p99", "RSS"):
        assert row in stdout, row
    assert "| target | goal | median | met |" in stdout


def test_reports_bench_smoke_prints_its_table() -> None:
    stdout = _run("bench.reports", "--smoke")
    for row in ("duckdb load", "funnel (4 steps, 1d)", "retention (14 days)"):
        assert row in stdout, row


def test_hotpath_bench_prints_every_stage() -> None:
    stdout = _run("bench.hotpath", "--requests", "2", "--rounds", "1")
    figures = json.loads(stdout.strip().splitlines()[-1])
    assert set(figures) == {"parse", "rows", "store", "track", "total_batch"}
    assert all(value > 0 for value in figures.values()), figures


def test_second_core_prototype_bench_prints_its_three_settings() -> None:
    stdout = _run("bench.second_core", "--smoke")
    for row in ("| eventd, 1 core |", "| eventd, every core |", "| 2 fronts + 1 writer, every"):
        assert row in stdout, row


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_paired_track_bench_prints_each_variant_against_ceiling_a() -> None:
    stdout = _run("bench.track_paired", "--rounds", "1", "--duration", "1", "a=", "b=")
    assert "round 1: ceiling A " in stdout
    assert "a: median " in stdout and "% of ceiling A per CPU-second" in stdout
    assert "b/a median " in stdout
