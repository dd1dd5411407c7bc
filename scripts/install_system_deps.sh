#!/usr/bin/env bash
# Debian packages the test suite starts as real services or drives (CI runs as root; no sudo).
# Idempotent: installs only what is missing.
#   redis-server: the Redis feedback store's tests (tests/test_feedback_store.py)
#   chromium:     the dashboard's browser tests (tests/test_dashboard.py) drive it with Playwright
#                 (executable_path=/usr/bin/chromium; Playwright's own browser download is never used)
set -euo pipefail
packages=(redis-server chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
