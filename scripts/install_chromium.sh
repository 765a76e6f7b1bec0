#!/usr/bin/env bash
# Installs Debian's chromium (and fonts for legible screenshots) when it is missing: the browser that
# tests/browser drives through Playwright (never a browser downloaded by Playwright itself).
# Used by .ci/run; without it the browser tests are skipped with the reason.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "cannot install chromium: not root and no passwordless sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install chromium: apt-get not found (install the chromium package by hand)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps post-install scripts from starting daemons (no init system here).
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq || { echo "cannot install chromium: apt-get update failed" >&2; exit 1; }
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core >/dev/null \
    || { echo "cannot install chromium: apt-get install chromium failed" >&2; exit 1; }

[ -x /usr/bin/chromium ] || { echo "cannot install chromium: /usr/bin/chromium missing after install" >&2; exit 1; }
echo "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
