"""Benchmarks of eventd against this machine's own ceilings (``python -m bench``).

Everything runs on loopback in separate processes, each pinned to a core: the
server under test on one, the load generator (and the sink) on the other. The
ceilings run in the same rounds as eventd, so the figures that matter are
ratios, which hold on a noisy machine. See docs/benchmarks.md.

One module, one job:

- :mod:`bench.events` ........ the event bodies (unique messageIds) and stored rows
- :mod:`bench.machine` ....... machine facts, core pinning, RSS sampling
- :mod:`bench.ceiling` ....... ceiling A, a bare aiohttp server (its own process)
- :mod:`bench.sqlite_ceiling`  ceiling B, raw SQLite inserts (its own process)
- :mod:`bench.sink` .......... the counting webhook sink (its own process)
- :mod:`bench.client` ........ a minimal keep-alive HTTP/1.1 client on asyncio
- :mod:`bench.loadgen` ....... Python load generator (batches, paced, fallback)
- :mod:`bench.wrk` ........... wrk with a Lua script making unique messageIds
- :mod:`bench.prefill` ....... writes events straight into an outbox file
- :mod:`bench.scenarios` ..... one function per measurement
- :mod:`bench.report` ........ statistics, the table, the targets
"""
