"""The jsonl destination on its own: deliver() into real files under tmp_path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.jsonl import JsonLines

from eventd import OK, Event, Retry
from eventd.config import ConfigError


def events(*messages: dict[str, Any], first_seq: int = 1) -> list[Event]:
    return [
        Event(seq, "app", 1_700_000_000_000, body=orjson.dumps(m))
        for seq, m in enumerate(messages, first_seq)
    ]


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": "u", "messageId": f"m{n:04}", **extra}


def lines(path: Path) -> list[dict[str, Any]]:
    """Each line of the file, parsed; a line that is not one JSON object fails the test."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the file ends mid-line"
    return [json.loads(line) for line in raw.decode().splitlines()]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def rotated(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


def oldest_first(path: Path) -> list[Path]:
    """The rotated files from the oldest (highest number), then the file itself."""
    count = len(names(path.parent)) - 1
    return [rotated(path, i) for i in range(count, 0, -1)] + [path]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def jsonl(session: aiohttp.ClientSession, path: Path, **settings: Any) -> JsonLines:
    config = {"path": str(path), **settings}
    JsonLines.validate_settings("file", config)  # as eventd does at start
    return JsonLines("file", config, session)


# -- writing -------------------------------------------------------------------------------


async def test_each_event_is_one_line_that_parses_back_to_it(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "out" / "nested" / "events.jsonl"  # directories made as needed
    messages = [
        track(1, properties={"price": 9.99, "tags": ["a", "b"], "nested": {"x": None}}),
        {"type": "identify", "userId": "u", "traits": {"name": "Zoë", "bio": "line 1\nline 2"}},
        {"type": "page", "anonymousId": "a", "name": "日本語", "properties": {"emoji": "🎉"}},
    ]
    assert await jsonl(session, path).deliver(events(*messages)) == OK
    assert lines(path) == messages
    assert len(path.read_bytes().splitlines()) == 3  # the newline in the trait is escaped


async def test_batches_are_appended_in_order_and_the_file_is_kept(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"before":"eventd"}\n')
    dest = jsonl(session, path)
    for start in range(0, 30, 10):
        batch = events(*(track(n) for n in range(start, start + 10)), first_seq=start + 1)
        assert await dest.deliver(batch) == OK
    assert lines(path) == [{"before": "eventd"}, *(track(n) for n in range(30))]


async def test_a_new_instance_appends_to_what_an_earlier_one_wrote(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    await jsonl(session, path).deliver(events(track(1)))
    await jsonl(session, path).deliver(events(track(2)))  # after a restart
    assert lines(path) == [track(1), track(2)]


async def test_concurrent_batches_do_not_interleave(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path, max_bytes=20_000, keep=50)  # rotations while writing
    batches = [events(*(track(b * 100 + i) for i in range(100))) for b in range(10)]
    assert await asyncio.gather(*(dest.deliver(b) for b in batches)) == [OK] * 10
    files = oldest_first(path)
    written = [line["messageId"] for f in files for line in lines(f)]
    assert sorted(written) == sorted(f"m{n:04}" for n in range(1000))
    # Each batch is whole and contiguous, in one file.
    for f in files:
        ids = [int(line["messageId"][1:]) for line in lines(f)]
        assert len(ids) % 100 == 0
        for at in range(0, len(ids), 100):
            assert ids[at : at + 100] == list(range(ids[at], ids[at] + 100))


async def test_a_path_that_cannot_be_written_is_retried(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    blocked = tmp_path / "a-directory"
    blocked.mkdir()
    outcome = await jsonl(session, blocked).deliver(events(track(1)))
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"cannot write {blocked}: Is a directory"

    under_a_file = tmp_path / "a-file"
    under_a_file.write_text("")
    outcome = await jsonl(session, under_a_file / "events.jsonl").deliver(events(track(1)))
    assert isinstance(outcome, Retry) and outcome.reason.startswith("cannot write ")


# -- rotation ------------------------------------------------------------------------------

LINE = len(orjson.dumps(track(0))) + 1  # every track(n) line below is this long


async def test_rotation_happens_only_past_max_bytes(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path, max_bytes=3 * LINE)
    await dest.deliver(events(track(1), track(2)))
    await dest.deliver(events(track(3)))  # exactly max_bytes: still one file
    assert path.stat().st_size == 3 * LINE
    assert not rotated(path, 1).exists()

    await dest.deliver(events(track(4)))  # one byte would be too many: rotate first
    assert lines(rotated(path, 1)) == [track(1), track(2), track(3)]
    assert lines(path) == [track(4)]


async def test_a_batch_is_never_split_across_files(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path, max_bytes=3 * LINE)
    await dest.deliver(events(track(1), track(2)))
    await dest.deliver(events(track(3), track(4)))  # would end at 4 lines: a new file
    assert lines(rotated(path, 1)) == [track(1), track(2)]
    assert lines(path) == [track(3), track(4)]

    big = events(*(track(n) for n in range(5, 10)))  # larger than max_bytes on its own
    await dest.deliver(big)
    assert lines(rotated(path, 2)) == [track(1), track(2)]
    assert lines(rotated(path, 1)) == [track(3), track(4)]
    assert lines(path) == [track(n) for n in range(5, 10)]


async def test_keep_bounds_the_rotated_files_and_drops_the_oldest(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path, max_bytes=2 * LINE, keep=3)
    for n in range(1, 13):  # 12 events, two per file: 6 files' worth
        await dest.deliver(events(track(n)))
    assert names(tmp_path) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.3",
    ]
    assert lines(path) == [track(11), track(12)]
    assert lines(rotated(path, 1)) == [track(9), track(10)]
    assert lines(rotated(path, 2)) == [track(7), track(8)]
    assert lines(rotated(path, 3)) == [track(5), track(6)]  # 1 to 4 are gone


async def test_keep_defaults_to_5(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path, max_bytes=LINE)
    for n in range(10):
        await dest.deliver(events(track(n)))
    assert names(tmp_path) == ["events.jsonl"] + [f"events.jsonl.{i}" for i in range(1, 6)]
    assert lines(rotated(path, 5)) == [track(4)]


async def test_without_max_bytes_the_file_only_grows(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    dest = jsonl(session, path)
    for start in range(0, 2000, 500):
        await dest.deliver(
            events(*(track(n, properties={"pad": "x" * 200}) for n in range(start, start + 500)))
        )
    assert names(tmp_path) == ["events.jsonl"]
    assert len(lines(path)) == 2000


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "destinations.file.settings: 'path' is a required property"),
        ({"path": ""}, "destinations.file.settings.path = ''"),
        ({"path": "x", "max_bytes": 0}, "destinations.file.settings.max_bytes = 0"),
        ({"path": "x", "max_bytes": "1MB"}, "destinations.file.settings.max_bytes = '1MB'"),
        ({"path": "x", "keep": 0}, "destinations.file.settings.keep = 0"),
        ({"path": "x", "rotate": True}, "'rotate' was unexpected"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        JsonLines.validate_settings("file", settings)
    assert expected in str(err.value)


async def test_integers_past_64_bits_are_written_with_every_digit(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "events.jsonl"
    body = b'{"type":"track","event":"E","messageId":"w","properties":{"n":123456789012345678901}}'
    assert await jsonl(session, path).deliver([Event(1, "app", 0, body=body)]) == OK
    assert b'"n":123456789012345678901}' in path.read_bytes()
    assert lines(path)[0]["properties"]["n"] == 123456789012345678901
