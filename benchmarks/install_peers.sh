#!/usr/bin/env bash
# Install the systems `make bench` compares kvstore with: etcd (Debian's etcd-server) and
# PySyncObj (PyPI, into the project's venv). Idempotent: what is already there is left alone.
# It never fails the bench run: a peer that cannot be installed is reported here and then
# skipped by the benchmarks with a message saying why.
#
# Usage: benchmarks/install_peers.sh [PYTHON]   (PYTHON defaults to .venv/bin/python)

set -u

PYTHON="${1:-.venv/bin/python}"

say() { printf 'install_peers: %s\n' "$*"; }

install_etcd() {
    if command -v etcd >/dev/null 2>&1; then
        say "etcd: already installed ($(command -v etcd))"
        return 0
    fi
    if [ "$(id -u)" != "0" ]; then
        say "etcd: not installed, and not root: skipping (as root: apt-get install etcd-server)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "etcd: not installed, and no apt-get here: skipping"
        return 0
    fi
    # Debian's package would also enable a system service; nothing starts it where there is no
    # init system, and the benchmark runs its own members on free loopback ports regardless.
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show etcd-server >/dev/null 2>&1; then
        say "etcd: package list has no etcd-server: running apt-get update"
        apt-get update -qq >/dev/null 2>&1 || say "etcd: apt-get update failed"
    fi
    if apt-get install -y -qq etcd-server >/dev/null 2>&1 && command -v etcd >/dev/null 2>&1; then
        say "etcd: installed $(etcd --version 2>/dev/null | head -n 1)"
    else
        say "etcd: apt-get install etcd-server failed: the etcd benchmarks will be skipped"
    fi
    return 0
}

install_pysyncobj() {
    if [ ! -x "$PYTHON" ]; then
        say "pysyncobj: no Python at $PYTHON: skipping"
        return 0
    fi
    if "$PYTHON" -c 'import pysyncobj' >/dev/null 2>&1; then
        say "pysyncobj: already installed ($("$PYTHON" -m pip show pysyncobj 2>/dev/null \
            | sed -n 's/^Version: //p'))"
        return 0
    fi
    if "$PYTHON" -m pip install --quiet pysyncobj >/dev/null 2>&1; then
        say "pysyncobj: installed into $PYTHON"
    else
        say "pysyncobj: pip install pysyncobj failed: the PySyncObj benchmarks will be skipped"
    fi
    return 0
}

install_etcd
install_pysyncobj
exit 0
