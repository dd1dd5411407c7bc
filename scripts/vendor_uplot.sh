#!/usr/bin/env bash
# Vendor uPlot (the dashboard's chart library) from the npm registry at a pinned version.
# Usage: scripts/vendor_uplot.sh 1.6.32   (then update dashboard_assets/VENDORED.txt with the printed digests)
set -euo pipefail
version="${1:?usage: $0 VERSION}"
dest="$(cd "$(dirname "$0")/.." && pwd)/src/hotserve/server/dashboard_assets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "uplot@${version}" >/dev/null && tar xzf "uplot-${version}.tgz")
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$dest/"
cp "$work/package/LICENSE" "$dest/uPlot.LICENSE.txt"
grep -q "\"version\": \"${version}\"" "$work/package/package.json"
(cd "$dest" && sha256sum uPlot.iife.min.js uPlot.min.css)
