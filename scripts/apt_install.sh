# Sourced by scripts/install_*.sh: `apt_install NAME PACKAGE...` installs Debian packages as root (or through
# passwordless sudo), without letting their post-install scripts start daemons (no init system here; the tests
# run their own servers on free ports). Every failure ends the script with "cannot install NAME: why".

apt_install() {
    local name=$1
    shift
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "cannot install $name: not root and no passwordless sudo" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "cannot install $name: apt-get not found (install the $name package by hand)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d (exit 101) keeps the packages' post-install from starting system-wide daemons.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod +x "$policy"
        created=1
    fi
    local status=0
    "${sudo[@]}" apt-get update -qq || status=1
    if [ "$status" -eq 0 ]; then
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=2
    fi
    if [ "$created" -eq 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
    case $status in
        1) echo "cannot install $name: apt-get update failed" >&2; exit 1 ;;
        2) echo "cannot install $name: apt-get install $* failed" >&2; exit 1 ;;
    esac
}
