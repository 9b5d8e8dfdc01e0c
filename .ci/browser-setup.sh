#!/usr/bin/env bash
# What tests/test_browser.py, tests/test_browser_rudderstack.py and the console's
# browser tests need: Debian's chromium (apt) and, in tests/browser and tests/console,
# the pinned npm packages (@segment/analytics-next, @rudderstack/analytics-js,
# playwright-core) from
# package-lock.json. Idempotent: installs only what is missing; `npm ci` re-creates
# node_modules from the lock file each run (a few seconds).
#
# playwright-core downloads no browser; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is set anyway
# so nothing in the tree can try (there is no network here but the registries).
# Exit status is non-zero when something could not be installed; the test then
# skips (chromium missing) or fails (chromium there, npm packages missing in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "browser-setup: $*"; }

if command -v chromium >/dev/null 2>&1; then
    say "chromium present: $(command -v chromium)"
else
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo -n); fi
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run (unattended upgrades, a parallel setup) holds the lock: wait for
    # it rather than fail.
    apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    say "installing chromium: apt-get update && apt-get install -y chromium"
    "${sudo[@]}" apt-get "${apt_opts[@]}" update -q
    "${sudo[@]}" apt-get "${apt_opts[@]}" install -y -q --no-install-recommends chromium
fi
# Debian's launcher script prints a harmless shell warning on some hosts; the version
# line is what matters.
say "$(chromium --version 2>/dev/null)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node and npm are needed (node >= 20, for playwright-core); not installed" >&2
    exit 1
fi
say "node $(node --version), npm $(npm --version 2>/dev/null)"

say "npm ci in tests/browser"
cd tests/browser
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
say "installed: $(node -e '
const v = (p) => require(`./node_modules/${p}/package.json`).version
console.log(["@segment/analytics-next", "@rudderstack/analytics-js", "playwright-core"].map((p) => `${p}@${v(p)}`).join(", "))
')"

# The web console's tests (tests/test_console_browser.py) drive chromium from their own
# folder, with only playwright-core.
say "npm ci in tests/console"
cd ../console
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
