#!/usr/bin/env bash
# Installs nginx (Debian package `nginx-light`) when it is missing. Used by .ci/run; tests/deploy/ray/test_front_proxy.py
# runs deploy/ray/nginx.conf with it in front of the Ray test cluster and skips, naming this script, without it.
# The package's own server is not started (no init system here; the test runs its own nginx on a free port).
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "nginx already installed: $( (command -v nginx || echo /usr/sbin/nginx) )"
    exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install nginx nginx-light
echo "installed $(/usr/sbin/nginx -v 2>&1)"
