#!/usr/bin/env bash
# Which matrix product should rps's engine use? Times matrixmultiply (today's, through
# ndarray), the gemm crate and OpenBLAS on the models' shapes, on one thread.
#   bench/gemm.sh [REPEATS]      (default 15)
# Installs libopenblas-dev if missing (apt, as root or through sudo); builds bench/gemm,
# a crate outside the rps workspace, so rps itself never links OpenBLAS.
set -euo pipefail
cd "$(dirname "$0")/gemm"
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends libopenblas-dev
fi
cargo build --release --quiet
# One thread each: OpenBLAS would otherwise start one per core.
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 exec target/release/gemm-choice "$@"
