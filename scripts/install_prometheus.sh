#!/usr/bin/env bash
# Installs the Prometheus server and promtool (Debian package `prometheus`) when they are missing.
# Used by .ci/run and by tests/deploy (which skip with this script's last line as the reason when it fails).
# The package's own daemon is not started (no init system here; the tests run their own server).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus already installed: $(command -v prometheus)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "cannot install prometheus: not root and no passwordless sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install prometheus: apt-get not found (install the prometheus package by hand)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package's post-install from starting a system-wide daemon on port 9090.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq || { echo "cannot install prometheus: apt-get update failed" >&2; exit 1; }
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { echo "cannot install prometheus: apt-get install prometheus failed" >&2; exit 1; }

command -v prometheus >/dev/null && command -v promtool >/dev/null \
    || { echo "cannot install prometheus: binaries missing after install" >&2; exit 1; }
echo "installed $(prometheus --version 2>&1 | head -n1)"
