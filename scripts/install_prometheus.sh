#!/usr/bin/env bash
# Installs the Prometheus server and promtool (Debian package `prometheus`) when they are missing.
# Used by .ci/run and by tests/deploy (which skip with this script's last line as the reason when it fails).
# The package's own daemon is not started (no init system here; the tests run their own server).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus already installed: $(command -v prometheus)"
    exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install prometheus prometheus

command -v prometheus >/dev/null && command -v promtool >/dev/null \
    || { echo "cannot install prometheus: binaries missing after install" >&2; exit 1; }
echo "installed $(prometheus --version 2>&1 | head -n1)"
