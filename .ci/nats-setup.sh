#!/usr/bin/env bash
# What the jetstream store's tests need: Debian's nats-server (2.9.10 on Debian 12),
# which tests/nats_cluster.py runs as a 3-server JetStream cluster on loopback.
# The Python client (nats-py) comes from PyPI with the test extra. Idempotent:
# installs only when the binary is missing. Exit status non-zero when it cannot be
# installed; the tests then skip, saying why (locally), or fail (in CI, CI=true).
set -euo pipefail
say() { echo "nats-setup: $*"; }

if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    say "$( (command -v nats-server || echo /usr/sbin/nats-server) | head -1) $(PATH=$PATH:/usr/sbin nats-server --version)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "nats-server is missing and apt-get is not available: install nats-server >= 2.9" >&2
    exit 1
fi
say "apt-get install nats-server"
apt-get update -q >/dev/null
apt-get install -y -q nats-server >/dev/null
say "installed $(PATH=$PATH:/usr/sbin nats-server --version)"
