#!/usr/bin/env bash
# System packages the test suite and benchmarks start as real processes (Debian/Ubuntu).
# Idempotent: installs only what is missing. CI runs it as root; elsewhere run it with sudo.
#   zookeeper  fleet tests (tests/test_fleet*.py) and bench/fleet.py; Debian's package brings OpenJDK
#   nginx      the load balancer in front of a fleet (deploy/nginx, tests/test_fleet.py)
set -euo pipefail

packages=(zookeeper nginx)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
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
