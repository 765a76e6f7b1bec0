#!/usr/bin/env bash
# Installs the PostgreSQL server (Debian package `postgresql`: initdb, pg_ctl under /usr/lib/postgresql/*/bin)
# when it is missing. Used by .ci/run; tests/fixtures/postgres.py starts its own throw-away cluster from those
# binaries and skips the PostgreSQL cases, naming this script, when they are absent.
# The package's own cluster and daemon are not started (no init system here; the tests run their own server).
set -euo pipefail

have_server() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if have_server; then
    echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "cannot install postgresql: not root and no passwordless sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install postgresql: apt-get not found (install the postgresql package by hand)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package's post-install from starting a system-wide daemon on port 5432.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq || { echo "cannot install postgresql: apt-get update failed" >&2; exit 1; }
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    || { echo "cannot install postgresql: apt-get install postgresql failed" >&2; exit 1; }

have_server || { echo "cannot install postgresql: initdb/pg_ctl missing after install" >&2; exit 1; }
echo "installed $("$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)/postgres" --version)"
