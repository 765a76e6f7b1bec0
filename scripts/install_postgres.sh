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

source "$(dirname "$0")/apt_install.sh"
apt_install postgresql postgresql

have_server || { echo "cannot install postgresql: initdb/pg_ctl missing after install" >&2; exit 1; }
echo "installed $("$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)/postgres" --version)"
