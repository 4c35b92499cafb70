#!/usr/bin/env bash
# `make test-pythons`: the storage, Raft and native tests on every CPython in PYTHONS (default
# 3.11 3.12 3.13) that this machine has or can install, each in its own venv (.venv-X.Y) with an
# editable install (which compiles the abi3 extension for it).
#
# An interpreter is taken from PATH (pythonX.Y), else from pyenv's versions (the machine image
# ships several), else installed from Debian's packages when they have it and we are root. A
# version found nowhere is reported and skipped; the run fails if one that ran failed, or if
# none ran. The last lines say which versions ran and where each interpreter came from.
set -uo pipefail
cd "$(dirname "$0")/../.."

PYTHONS=${PYTHONS:-3.11 3.12 3.13}
TESTS=${TESTS:-tests/storage tests/raft tests/native}

# True if $1 runs and is CPython $2 with venv (a pyenv shim for a version that is installed but
# not selected exists and fails).
runs_as() {
    "$1" -c "import sys, venv; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$2')" \
        >/dev/null 2>&1
}

find_python() {
    local version=$1 candidate
    if candidate=$(command -v "python$version") && runs_as "$candidate" "$version"; then
        echo "$candidate"
        return 0
    fi
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    for candidate in "$pyenv_root"/versions/"$version".*/bin/"python$version"; do
        if runs_as "$candidate" "$version"; then
            echo "$candidate"
            return 0
        fi
    done
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
        apt-cache show "python$version-venv" >/dev/null 2>&1; then
        echo "python$version: installing Debian's python$version-venv" >&2
        if apt-get install -y -q "python$version-venv" "python$version-dev" >&2 &&
            runs_as "/usr/bin/python$version" "$version"; then
            echo "/usr/bin/python$version"
            return 0
        fi
    fi
    return 1
}

declare -a summary
failed=0
ran=0
for version in $PYTHONS; do
    if ! python=$(find_python "$version"); then
        summary+=("python$version: not on PATH, not under pyenv, not in Debian's packages: skipped")
        continue
    fi
    venv=".venv-$version"
    echo "== python$version ($python) in $venv"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" || { summary+=("python$version: venv failed"); failed=1; continue; }
    fi
    if ! "$venv/bin/python" -m pip install --quiet -e '.[test]'; then
        summary+=("python$version ($python): install failed")
        failed=1
        continue
    fi
    ran=$((ran + 1))
    # shellcheck disable=SC2086  # TESTS is a list of paths
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS; then
        summary+=("python$version ($("$venv/bin/python" -V 2>&1), $python): passed")
    else
        summary+=("python$version ($("$venv/bin/python" -V 2>&1), $python): FAILED")
        failed=1
    fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$ran" = 0 ]; then
    echo "no Python version could be run"
    exit 1
fi
exit "$failed"
