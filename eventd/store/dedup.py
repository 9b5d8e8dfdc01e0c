"""The 24 h (source, messageId) dedup set of one partition, on disk (RocksDB).

Why not JetStream's own message-id window: the server keeps every id of the window
in RAM on every replica (measured: ~200 bytes per id, +226 MB RSS per server for
1,000,000 ids), so a 24 h window at 7 K events/s would need over 100 GB of RAM per
replica. The stream's window is kept for what it is good at (a publisher retrying
the same publish, minutes); the 24 h rule lives here, the way Segment runs it at its
scale: messages are partitioned, and each partition has one dedup stage at a
time owning an on-disk set. The jetstream store partitions by a hash of the
event's user (userId, else anonymousId), not of its messageId: a retry is the
same payload, so it lands in the same partition as the first copy, and one
partition then also carries one user's events in order (per-user ordering needs
exactly that; partitioning by messageId would let two stages forward a user's
events in either order).

Shape of the set: key ``source \\x00 messageId`` (UTF-8, the exact pair: no hash,
so no two distinct events can collide) -> ``received_at`` (unix ms, 8 bytes
big-endian), followed, for a store whose log has a seq per event (the SQLite
outbox, :meth:`DedupSet.add_stored`), by that event's seq (8 bytes), which finds
the stored copy of a messageId without an index on the log; on the jetstream
store, by the log message's sequence, which finds the events of a message the log
lost (:meth:`DedupSet.stored_within`, :attr:`DedupSet.mending`). A key counts as seen
when it was stored less than the window before the new event's ``received_at``
(SQLite's rule: the window runs from the stored copy). Keys older than the window
are dropped by RocksDB's TTL compaction (opened with ``AccessType.with_ttl``);
until compaction runs they are still read, and the timestamp check ignores them.

Crash safety: each batch of keys is written in one RocksDB WriteBatch together with
the ``watermark``, the highest log sequence whose keys the set holds, so the set and
its watermark move together. After a crash (the WriteBatch is not fsynced: at most
the last few batches are lost), or on a node that never held the partition (its
owner's disk is gone), the stage reads the log of its partition from the watermark
(or from ``received_at >= now - window`` when the set is empty) and adds those keys
(:meth:`DedupSet.rebuild`) before it forwards anything: the set is a cache of the
log, never the only copy of a fact.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, WriteBatch

MEMTABLE_BYTES = 16 * 1024 * 1024
_WATERMARK = b"\xff\xffwatermark"  # sorts after every key; no source name starts with 0xff
_MENDING = b"\xff\xffmending"  # (from, through): log sequences lost, being forwarded again


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key`` (the jetstream store uses the event's user): a
    stable hash (CRC-32). Stable across processes and versions (Python's ``hash``
    is salted per process), so every node routes a retried message alike."""
    return zlib.crc32(key.encode()) % partitions


def dedup_key(source: str, message_id: str) -> bytes:
    """The set's key for (source, messageId); NUL cannot occur in a source name."""
    return f"{source}\x00{message_id}".encode()


# received_at ms, then seq: 8 bytes each, big-endian (one call: twice as fast as two to_bytes)
_pack_ms_seq = struct.Struct(">QQ").pack


def _ms(value: bytes) -> int:
    return int.from_bytes(value[:8], "big")


class DedupSet:
    """The on-disk set of one partition (one RocksDB directory).

    Not thread-safe and single-owner: exactly one stage writes a partition's set at
    a time (the jetstream store holds a lease on the partition before opening it).
    """

    def __init__(self, path: Path, window_ms: int) -> None:
        self.path = path
        self.window_ms = window_ms
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # RAM: RocksDB's default memtable is 64 MB (x2 while one is flushed), which
        # alone would double eventd's RSS; 16 MB holds ~150,000 keys, and a flush
        # writes one small L0 file in the background.
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        # Point lookups of random keys: a bloom filter per SST file saves most disk reads
        # for keys never seen (the common case: most messageIds are new).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        # The same for the memtable, where the newest keys are (issue 18): without a
        # filter every lookup of a new key walks the skiplist (cache misses on random
        # keys). Measured, 300,000 UUID keys, 1,600 a call: the lookup 2.7-3.4 -> 0.75-0.85
        # µs of CPU a key, the add -0.1 to +0.6 µs. Costs 10 % of a memtable (1.6 MB each); a
        # bloom filter has no false negatives, so dedup stays exact.
        options.set_memtable_whole_key_filtering(True)
        options.set_memtable_prefix_bloom_ratio(0.1)
        # RocksDB's info log rolls into LOG.old.* files and keeps 1,000 of them by
        # default: on a long-running box that is disk storage.max_size would not expect.
        options.set_keep_log_file_num(2)
        ttl_seconds = max(1, window_ms // 1000)
        # The default column family's options given again: without them rocksdict reopens
        # an existing set with the options of its OPTIONS file, which drop the bloom filter
        # (measured: lookups in a set of 10,000,000 keys 4x slower, every reopen after
        # the first).
        self._db = Rdict(
            str(path),
            options,
            column_families={"default": options},
            access_type=AccessType.with_ttl(ttl_seconds),
        )

    @property
    def watermark(self) -> int:
        """The highest log sequence whose keys are in the set (0: none)."""
        value = self._db.get(_WATERMARK)
        return _ms(value) if value is not None else 0

    @property
    def mending(self) -> tuple[int, int] | None:
        """The jetstream store's log loss being mended: (the partition's last log
        sequence left, the watermark when the loss was found); the keys kept with a
        sequence in ``(from, through]`` went in lost messages. None: no loss."""
        value = self._db.get(_MENDING)
        if value is None:
            return None
        return _ms(value), int.from_bytes(value[8:16], "big")

    def set_mending(self, lost: tuple[int, int] | None) -> None:
        """Record (or, None, clear) :attr:`mending`; kept on disk so a stage that
        stops half way resumes it."""
        if lost is None:
            self._db.delete(_MENDING)
        else:
            self._db.put(_MENDING, _pack_ms_seq(*lost))

    def filter_new(self, items: Sequence[tuple[bytes, int]]) -> list[int]:
        """Indexes of ``items`` (key, received_at ms) that are not repeats.

        A repeat is a key stored less than the window before the item's
        received_at, or an earlier item of the same call. Reads only: call
        :meth:`add` with the new ones once they are safely in the log.
        """
        if not items:
            return []
        keys: list[str | int | float | bytes | bool] = [key for key, _ in items]
        stored: list[bytes | None] = self._db.get(keys) or []
        if stored.count(None) == len(items) and len(set(keys)) == len(keys):
            return list(range(len(items)))  # the common case: all new, no repeat in the call
        new: list[int] = []
        first_in_call: dict[bytes, int] = {}
        for i, ((key, received_at), value) in enumerate(zip(items, stored, strict=True)):
            if value is not None and received_at - _ms(value) < self.window_ms:
                continue
            earlier = first_in_call.get(key)
            if earlier is not None and received_at - earlier < self.window_ms:
                continue
            first_in_call[key] = received_at
            new.append(i)
        return new

    def forwarded_through(self, items: Sequence[tuple[bytes, int]]) -> int | None:
        """For a group of items (key, received_at ms) already through its stage: None
        when one of them is not in the set within the window (never forwarded), else
        the highest seq :meth:`add_stored` kept with them (0 when none was kept: keys
        stored by :meth:`add`). One multi-get, as :meth:`filter_new`."""
        if not items:
            return 0
        keys: list[str | int | float | bytes | bool] = [key for key, _ in items]
        stored: list[bytes | None] = self._db.get(keys) or []
        through = 0
        for (_, received_at), value in zip(items, stored, strict=True):
            if value is None or received_at - _ms(value) >= self.window_ms:
                return None
            if len(value) >= 16:
                through = max(through, int.from_bytes(value[8:16], "big"))
        return through

    def stored_within(self, items: Sequence[tuple[bytes, int]], lost: tuple[int, int]) -> list[int]:
        """Indexes of ``items`` (key, received_at ms) whose kept seq (:meth:`add_stored`)
        is in ``(lost[0], lost[1]]``: on the jetstream store, the events whose log
        message was lost (:attr:`mending`), to be forwarded again."""
        low, high = lost
        if not items:
            return []
        keys: list[str | int | float | bytes | bool] = [key for key, _ in items]
        stored: list[bytes | None] = self._db.get(keys) or []
        return [
            i
            for i, value in enumerate(stored)
            if value is not None
            and len(value) >= 16
            and low < int.from_bytes(value[8:16], "big") <= high
        ]

    def add(self, items: Iterable[tuple[bytes, int]], watermark: int | None = None) -> None:
        """Store keys (key, received_at ms) and, atomically with them, the watermark."""
        batch = WriteBatch(raw_mode=True)
        for key, received_at in items:
            batch.put(key, received_at.to_bytes(8, "big"))
        if watermark is not None:
            batch.put(_WATERMARK, watermark.to_bytes(8, "big"))
        self._db.write(batch)

    def add_stored(self, items: Iterable[tuple[bytes, int, int]], watermark: int) -> None:
        """Store keys (key, received_at ms, seq of the stored event) and, atomically
        with them, the watermark; :meth:`stored_seq` gives the seq back."""
        batch = WriteBatch(raw_mode=True)
        put = batch.put
        for key, received_at, seq in items:
            put(key, _pack_ms_seq(received_at, seq))
        batch.put(_WATERMARK, watermark.to_bytes(8, "big"))
        self._db.write(batch)

    def stored_seq(self, key: bytes) -> int | None:
        """The seq :meth:`add_stored` kept with ``key`` (the newest copy), or None
        (never stored that way, or dropped past the window by compaction)."""
        value = self._db.get(key)
        if value is None or len(value) < 16:
            return None
        return int.from_bytes(value[8:16], "big")

    def rebuild(self, log: Iterable[tuple[int, bytes, int]]) -> int:
        """Add the keys of log entries (seq, key, received_at ms) read after the
        watermark, in log order; returns how many were added. A log message holds
        a group of events, so several entries share one seq."""
        start = last = self.watermark
        added = 0
        # each key with its log seq: the jetstream store's stage finds by it the
        # events whose log message was lost (:meth:`stored_after`)
        chunk: list[tuple[bytes, int, int]] = []
        for seq, key, received_at in log:
            if seq <= start:
                continue
            chunk.append((key, received_at, seq))
            last = max(last, seq)
            if len(chunk) >= 10_000:
                self.add_stored(chunk, last)
                added += len(chunk)
                chunk = []
        if chunk or last != start:
            self.add_stored(chunk, last)
            added += len(chunk)
        return added

    def disk_bytes(self) -> int:
        """Bytes of the set's directory (SST files, RocksDB's WAL, manifest, logs):
        what it adds to ``storage.max_size``'s count."""
        total = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # a file compaction just removed
                    total += entry.stat().st_size
        return total

    def compact(self) -> None:
        """Compact the whole set now (after a bulk load, so later writes do not pay
        for it in background compactions)."""
        self._db.compact_range(None, None)

    def flush(self) -> None:
        """Write the memtable to disk (what close does; for a clean hand-over)."""
        self._db.flush()

    def close(self) -> None:
        self._db.close()
