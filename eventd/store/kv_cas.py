"""Compare-and-set on a NATS key-value bucket that holds on every nats-server.

A key-value write that expects its key's last revision sends
``Nats-Expected-Last-Subject-Sequence``. nats-server before 2.9.21 (Debian's 2.9.10
among them) checks that header on the stream leader only, before proposing the
write, not where the replicas apply it (nats-server issue #4320): two writes sent
at once with the same expected revision are both stored, and the second silently
overwrites the first. Measured on a 3-server cluster of Debian's 2.9.10
(``python -m bench.kv_cas``): 260 of 300 such pairs both succeeded; a create's
expected revision 0, and the stream-wide ``Nats-Expected-Last-Sequence``, held in
all 300 (both are checked where the write is applied).

So here:

- :func:`create` expects revision 0, which holds; over a key's delete or purge
  marker (a key given back) it writes as :func:`update` does;
- :func:`update` and :func:`delete` expect both the key's revision and the
  stream's last sequence, read from its leader just before the write: the write
  lands only if nothing at all was written to the bucket in that moment. A write
  to another key in that moment is a conflict too (a false one): the caller reads
  again and retries, as after a real conflict, so these are for buckets written a
  few times a second at most (suppressions, deletions, redrive marks, lease
  take-overs), not for hot keys. Each costs one more request (the stream's info).

All three raise nats-py's ``KeyWrongLastSequenceError`` on a conflict, as
``KeyValue.create``/``update`` do; other nats errors pass through.
"""

from __future__ import annotations

from nats.js.errors import (
    APIError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KV_DEL, KV_OP, KeyValue

# JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr: the codes
# nats-py's KeyValue maps to KeyWrongLastSequenceError
WRONG_LAST = (10071, 10164)
EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM = "Nats-Expected-Last-Sequence"
CREATE_TRIES = 10  # a create over a marker, read and written again at most this often


async def create(kv: KeyValue, key: str, value: bytes) -> int:
    """Write ``key`` if it holds no value (never written, expired, deleted or
    purged); returns its revision. ``KeyWrongLastSequenceError``: it holds one.
    ``TimeoutError``: over a marker, the bucket took another write at each of
    CREATE_TRIES tries (a busy bucket: try again later)."""
    for _ in range(CREATE_TRIES):
        try:
            return await _publish(kv, key, value, {EXPECTED_SUBJECT: "0"})
        except KeyWrongLastSequenceError:
            pass
        try:
            await kv._get(key)  # a value: taken
        except KeyDeletedError as gone:  # a marker: write over it, safely
            try:
                return await update(kv, key, value, last=gone.entry.revision or 0)
            except KeyWrongLastSequenceError:
                continue  # another write to the bucket meanwhile: look again
        except KeyNotFoundError:
            continue  # expired or purged since: revision 0 again
        raise KeyWrongLastSequenceError(description=f"{key} exists")
    raise TimeoutError(f"{key}: the bucket took another write at each of {CREATE_TRIES} tries")


async def update(kv: KeyValue, key: str, value: bytes, last: int) -> int:
    """Write ``key`` if its last revision is ``last`` and nothing else was written
    to the bucket since it was read (see the module docstring); returns the new
    revision. ``KeyWrongLastSequenceError``: a conflict, read again."""
    return await _publish(kv, key, value, await _expect(kv, last))


async def delete(kv: KeyValue, key: str, last: int) -> int:
    """Put a delete marker on ``key`` under :func:`update`'s condition; returns the
    marker's revision."""
    headers = await _expect(kv, last)
    headers[KV_OP] = KV_DEL
    return await _publish(kv, key, b"", headers)


async def _expect(kv: KeyValue, last: int) -> dict[str, str]:
    """The headers that make a write land only on ``last`` and on the stream's
    last sequence as its leader reports it now."""
    info = await kv._js.stream_info(kv._stream)
    return {EXPECTED_SUBJECT: str(last), EXPECTED_STREAM: str(info.state.last_seq)}


async def _publish(kv: KeyValue, key: str, value: bytes, headers: dict[str, str]) -> int:
    try:
        ack = await kv._js.publish(f"{kv._pre}{key}", value, headers=headers)
    except APIError as exc:
        if exc.err_code in WRONG_LAST:
            raise KeyWrongLastSequenceError(description=exc.description) from exc
        raise
    return ack.seq
