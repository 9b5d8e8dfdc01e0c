#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs lint, types and pytest.
# Arguments go to pytest (e.g. `bash tests/run.sh -k ingest`).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
# systemd-analyze, for the unit's verify test (Debian's systemd package).
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null; then
    (apt-get update -q && apt-get install -y -q systemd) >/dev/null \
        || echo "systemd-analyze unavailable: the unit verify test will be skipped"
fi
# Chromium (apt) and the npm packages of the browser test; the browser test
# skips, saying why, when they cannot be installed.
if [ -f .ci/browser-setup.sh ]; then
    bash .ci/browser-setup.sh || echo "browser setup failed: the browser test will be skipped"
fi
# Debian's nats-server, for the jetstream store's cluster tests.
bash .ci/nats-setup.sh || echo "nats setup failed: the JetStream tests will be skipped (in CI: failed)"
bash .ci/node-setup.sh || echo "node setup failed: the Node SDK test will be skipped (in CI: failed)"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
