#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, lints, docs, and
# runs unit and multi-rank tests (real mpirun) in release mode, the Python package's
# tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-slurm.sh
# The rps Python package in target/python, for tests/python.rs and tests/slurm.rs.
scripts/python.sh
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --workspace --no-deps
cargo test --release --locked --workspace
