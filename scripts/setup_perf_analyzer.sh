#!/usr/bin/env bash
# Install Triton's perf_analyzer in its own virtual environment; idempotent.
#
#   scripts/setup_perf_analyzer.sh        prints the venv's path when done
#
# The PyPI package `perf-analyzer` has no binary here, and the newest tritonclient wheels bundle
# one built for a newer glibc. tritonclient[http]==2.50.0 bundles one that runs: it needs Debian's
# libb64-0d and libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12; it loads without a GPU), and that
# tritonclient wants numpy<2, hence a venv of its own. Run the binary with LD_LIBRARY_PATH set to
# the venv's nvidia/cuda_runtime/lib (tests/perf_analyzer_env.py does).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERF_ANALYZER_VENV:-$ROOT/.cache/perf-analyzer-venv}"
PYTHON="${PYTHON:-python3}"
PACKAGES=("tritonclient[http]==2.50.0" "nvidia-cuda-runtime-cu12")
STAMP="$VENV/.inscale-installed"

# Bold only on a terminal, as scripts/dev: CI logs and redirected output get no escape codes.
log() {
    if [ -t 2 ]; then
        printf '\033[1m[perf_analyzer]\033[0m %s\n' "$*" >&2
    else
        printf '[perf_analyzer] %s\n' "$*" >&2
    fi
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "${PACKAGES[*]}" ]; then
    log "installing ${PACKAGES[*]} into $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    echo "${PACKAGES[*]}" > "$STAMP"
fi

if ldd "$VENV/bin/perf_analyzer" 2>/dev/null | grep -q 'libb64.*not found'; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "libb64.so.0d is missing and this is not a Debian-like system: install libb64 yourself"
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing Debian package libb64-0d"
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -print -quit 2>/dev/null)" ]; then
        $sudo apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null \
        || { $sudo apt-get update -qq \
             && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null; }
fi

echo "$VENV"
