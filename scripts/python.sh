#!/usr/bin/env bash
# The `rps` Python package (crates/py), built from this checkout and installed into its
# own virtual environment, target/python: what the Python tests and examples run on.
# Idempotent; rebuilds the package every time (cargo recompiles only what changed).
#
#   scripts/python.sh            # target/python/bin/python now imports rps
#   RPS_PYTHON=python3.11 scripts/python.sh
#
# Elsewhere, one command installs it into any environment:
#   pip install ./crates/py      (needs the Debian packages of scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
venv=target/python
if [ ! -x "$venv/bin/python" ]; then
    if ! "${RPS_PYTHON:-python3}" -m venv "$venv"; then
        # Debian's own python3 keeps venv in a package of its own.
        rm -rf "$venv"
        echo "python: installing Debian's python3-venv" >&2
        apt-get install -y -qq python3-venv >/dev/null
        "${RPS_PYTHON:-python3}" -m venv "$venv"
    fi
fi
# NumPy is the package's one dependency; maturin is its build backend (pip fetches it
# into an isolated build environment from PyPI).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy
# Always rebuilt and reinstalled (same version number, new code).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./crates/py
"$venv/bin/python" -c 'import rps; print("rps Python package:", rps.__file__)'
