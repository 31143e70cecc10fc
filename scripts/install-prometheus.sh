#!/usr/bin/env bash
# Install Prometheus from Debian's package for the metrics tests, without running its service.
# Idempotent: does nothing when `prometheus` is already on PATH. The tests start their own
# server (tests/harness/prometheus.py) on a free loopback port with a throwaway data directory.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus: $(prometheus --version 2>&1 | head -1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# policy-rc.d exit 101 keeps dpkg from starting the packaged service while it installs.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# If an init system did start it anyway, stop it: tests never use the packaged service.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
    $SUDO systemctl disable prometheus || true
fi

echo "prometheus: $(prometheus --version 2>&1 | head -1)"
