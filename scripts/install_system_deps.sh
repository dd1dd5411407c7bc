#!/usr/bin/env bash
# Debian packages the test suite (and the benchmarks) start as real services or drive. CI runs
# it as root; elsewhere run it with sudo. Idempotent: installs only what is missing.
#   redis-server  the Redis feedback store's tests (tests/test_feedback_store.py)
#   chromium      the dashboard's browser tests (tests/test_dashboard.py) drive it with Playwright
#                 (executable_path=/usr/bin/chromium; Playwright's own browser download is never used)
#   zookeeper     fleet tests (tests/test_fleet*.py) and bench/fleet.py; Debian's package brings OpenJDK
#   nginx         the load balancer in front of a fleet (deploy/nginx, tests/test_fleet.py)
set -euo pipefail
packages=(redis-server chromium zookeeper nginx)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages present: ${packages[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "missing ${missing[*]} and no apt-get here: install them with your package manager" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends: the zookeeper package alone (no zookeeperd service that would start
# a server on 2181); the tests start their own on free ports.
apt-get install -y -q --no-install-recommends "${missing[@]}"
