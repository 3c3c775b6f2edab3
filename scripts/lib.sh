# Shared by scripts/run and scripts/test: find Python >= 3.10, make the
# virtualenv, install netecho into it (a normal install, not editable: see
# pip install -e of a flat layout hides the twistd plugin) and regenerate Twisted's plugin cache.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${NETECHO_VENV:-$ROOT/.venv}

say() { printf '==> %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    # Debian packages, installed only when we are root (CI is).
    is_root || return 1
    command -v apt-get >/dev/null || return 1
    if [ -z "${NETECHO_APT_UPDATED:-}" ]; then
        say "apt-get update"
        apt-get update -qq >/dev/null
        NETECHO_APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

find_python() {
    local c
    for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    echo "netecho: Python >= 3.10 not found (set PYTHON=/path/to/python3)" >&2
    return 1
}

make_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    local py
    py=$(find_python)
    say "creating virtualenv $VENV with $py"
    if ! "$py" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        # Debian ships venv (ensurepip) in a separate package.
        local ver
        ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        apt_install "python$ver-venv" || apt_install python3-venv || {
            echo "netecho: '$py -m venv' failed; install python3-venv (apt-get install python3-venv) and retry" >&2
            return 1
        }
        "$py" -m venv "$VENV"
    fi
}

install_netecho() {
    # $1: the pip requirement for this checkout, e.g. "." or ".[test]"
    make_venv
    say "installing netecho$([ "$1" = . ] || echo " ${1#.}") into $VENV"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$1")
    # Write twisted/plugins/dropin.cache now, so an unprivileged daemon does
    # not log "Unable to write to plugin cache" at every start. From / so
    # this checkout's twisted/plugins is not scanned instead.
    (cd / && "$VENV/bin/python" -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))')
}
