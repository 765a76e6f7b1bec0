#!/usr/bin/env bash
# Installs Debian's chromium (and fonts for legible screenshots) when it is missing: the browser that
# tests/browser drives through Playwright (never a browser downloaded by Playwright itself).
# Used by .ci/run; without it the browser tests are skipped with the reason.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install chromium chromium fonts-liberation fonts-dejavu-core

[ -x /usr/bin/chromium ] || { echo "cannot install chromium: /usr/bin/chromium missing after install" >&2; exit 1; }
echo "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
