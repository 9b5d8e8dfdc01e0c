"""wrk for single-event load: a Lua script gives every request a new messageId.

The body is cut around its messageId (``bench.events``) and each wrk thread
numbers its own requests, so ids are ``{tag}-{thread}-{n}``. ``done()`` prints
one JSON line with the counts and latency percentiles.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson

from bench import events

SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{authorization}"
local head = [==[{head}]==]
local tail = [==[{tail}]==]
local threads = {{}}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. "{tag}-" .. tid .. "-" .. counter .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def script(path: Path, tag: str) -> Path:
    head, tail = events.track_body()
    path.write_text(
        SCRIPT.format(
            authorization=events.AUTHORIZATION, head=head.decode(), tail=tail.decode(), tag=tag
        )
    )
    return path


def run(url: str, lua: Path, *, conns: int, duration: float, threads: int = 1) -> dict[str, Any]:
    """Run wrk against ``url`` (``/v1/track``); requests/s and latency in ms."""
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{"))
    r = orjson.loads(line)
    seconds = r["duration_us"] / 1e6
    good = r["requests"] - r["status_errors"]
    return {
        "requests_per_s": good / seconds,
        "requests": good,
        "errors": r["status_errors"] + r["socket_errors"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
    }
