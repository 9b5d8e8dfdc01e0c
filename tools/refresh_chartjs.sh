#!/usr/bin/env bash
# Refresh the console's vendored Chart.js from npm (the registry's tarball, checked
# against its published integrity by npm): eventd/console/static/vendor/ gets the
# UMD build and the licence. Usage: tools/refresh_chartjs.sh [VERSION] (default: the
# version pinned below; pass "latest" to move to the newest release, then pin it).
set -euo pipefail
VERSION="${1:-4.6.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/eventd/console/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
tarball="$(npm pack --silent "chart.js@$VERSION")"
tar -xzf "$tarball"
got="$(node -p 'require("./package/package.json").version')"
mkdir -p "$DEST"
cp package/dist/chart.umd.min.js "$DEST/chart.umd.min.js"
cp package/LICENSE.md "$DEST/chart.js-LICENSE.md"
echo "$got" > "$DEST/chart.js-VERSION"
echo "chart.js $got -> $DEST"
