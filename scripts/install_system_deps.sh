#!/usr/bin/env bash
# Debian packages the test suite needs (CI runs as root; idempotent: installs only what is missing).
#   chromium: the dashboard's browser tests (tests/test_dashboard.py) drive it with Playwright
#             (executable_path=/usr/bin/chromium; Playwright's own browser download is never used).
set -euo pipefail
packages=(chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
