#!/usr/bin/env bash
# What tests/test_node_sdk.py needs: node >= 20 and, in tests/node, the pinned npm
# packages (@segment/analytics-node, analytics-node 6.x, @rudderstack/rudder-sdk-node)
# from package-lock.json. Idempotent: `npm ci` re-creates node_modules from the lock
# file each run (a few seconds).
#
# --omit=optional leaves out rudder-sdk-node's optional Redis queue (bull, ioredis and
# a native msgpack addon), which the test does not use; --ignore-scripts because none
# of the packages needs an install script. Exit status is non-zero when something is
# missing or could not be installed; the test then skips, saying why (locally), or
# fails (in CI, CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "node-setup: $*"; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node and npm are needed (node >= 20, for @segment/analytics-node 3.x); not installed" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    say "node $(node --version) is too old: @segment/analytics-node 3.x needs node >= 20" >&2
    exit 1
fi
say "node $(node --version), npm $(npm --version 2>/dev/null)"

say "npm ci in tests/node"
cd tests/node
npm ci --no-audit --no-fund --omit=optional --ignore-scripts --loglevel=error
say "installed: $(node -e '
const v = (p) => require(`./node_modules/${p}/package.json`).version
const pkgs = ["@segment/analytics-node", "analytics-node", "@rudderstack/rudder-sdk-node"]
console.log(pkgs.map((p) => `${p}@${v(p)}`).join(", "))
')"
