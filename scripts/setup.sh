#!/usr/bin/env bash
# Installs what rps needs on Debian (idempotent: only missing packages are installed),
# then builds the release binary. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libclang-dev pkg-config dataset-fashion-mnist fonts-dejavu-core
  # The datacenter simulation (netsim/): ns-3 and a C++ compiler.
  g++ libns3-dev libgsl-dev
  # The namespace testbed (testbed/testbed.sh): hosts, real loss, per-packet offloads.
  iproute2 nftables ethtool iputils-ping)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo build --release --locked
test -x target/release/rps || { echo "setup: build failed" >&2; exit 1; }
# The ns-3 datacenter simulation (see docs/operations.md); rebuilt only when
# its source changed.
netsim/build.sh >/dev/null
