#!/usr/bin/env bash
# Installs nginx (Debian package `nginx-light`) when it is missing. Used by .ci/run; tests/ray/test_front_proxy.py
# runs deploy/ray/nginx.conf with it in front of the Ray test cluster and skips, naming this script, without it.
# The package's own server is not started (no init system here; the test runs its own nginx on a free port).
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "nginx already installed: $( (command -v nginx || echo /usr/sbin/nginx) )"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "cannot install nginx: not root and no passwordless sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install nginx: apt-get not found (install the nginx package by hand)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package's post-install from starting a system-wide server on port 80.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq || { echo "cannot install nginx: apt-get update failed" >&2; exit 1; }
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
    || { echo "cannot install nginx: apt-get install nginx-light failed" >&2; exit 1; }
echo "installed $(/usr/sbin/nginx -v 2>&1)"
