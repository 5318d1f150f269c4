#!/usr/bin/env bash
# The engine's matrix product against the libraries it could use: times matrixmultiply
# (ndarray's), the gemm crate (the engine's product until issue 22), and rps's own
# fixed-order product (the instruction set the CPU has, and AVX2), one thread, on the
# shapes one batch-32 step of the models produces.
#   bench/gemm.sh [REPEATS]      (default 15)
# bench/gemm is a crate outside the rps workspace, so rps itself never links gemm.
set -euo pipefail
cd "$(dirname "$0")/gemm"
cargo build --release --quiet
exec target/release/gemm-choice "$@"
