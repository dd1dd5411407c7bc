#!/usr/bin/env bash
# System packages the test suite starts as real services. Idempotent: installs only what is
# missing. Runs as root (CI does); no sudo.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)  # the Redis feedback store's tests (issue 11)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
