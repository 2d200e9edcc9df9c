# Sourced by scripts/test and scripts/bench: a virtualenv in .venv, the
# servers the tests start, and the Pythons of the test matrix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

pip_install() {
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
}

# Make the test matrix's Pythons visible to nox. pyenv shows only its
# selected version by default; select the newest installed release of each
# asked-for version too. A version that is not installed is left out, and
# nox then names it and fails.
use_pyenv_pythons() {
    command -v pyenv >/dev/null 2>&1 || return 0
    local selected=() version found
    selected+=("$(pyenv version-name)")
    for version in "$@"; do
        if found=$(pyenv latest "$version" 2>/dev/null); then
            selected+=("$found")
        fi
    done
    PYENV_VERSION=$(IFS=:; echo "${selected[*]}")
    export PYENV_VERSION
}

# ensure_binary BINARY PACKAGE: the server binary the tests start, installed
# from Debian's PACKAGE when missing (as root with apt-get), else a clear error.
# Debian puts some in /usr/sbin, which a non-root PATH may lack.
ensure_binary() {
    local binary=$1 package=$2
    if command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$binary is missing; installing the Debian package $package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    fi
    if ! command -v "$binary" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$binary" ]; then
        echo "error: the tests need the $binary binary, which is not installed and could not be" >&2
        echo "installed here (needs root and apt-get). Install it, e.g." >&2
        echo "'sudo apt-get install $package', and run this again." >&2
        exit 1
    fi
}

ensure_servers() {
    ensure_binary redis-server redis-server
    ensure_binary redis-cli redis-tools  # joins the test cluster's nodes
    ensure_binary nats-server nats-server
    ensure_binary mosquitto mosquitto
}
