#!/usr/bin/env bash
# Builds the ns-3 simulator netsim/build/rps-netsim (git-ignored). Rebuilds only when the
# source, this script or the ns-3 flags changed. Needs Debian's libns3-dev, libgsl-dev and
# libhdf5-dev (scripts/setup.sh installs them). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")"
MODULES="ns3-core ns3-network ns3-internet ns3-point-to-point ns3-applications ns3-traffic-control hdf5"
if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists $MODULES 2>/dev/null; then
  echo "netsim/build.sh: ns-3 3.37 or HDF5 development files not found (pkg-config $MODULES);" \
    "install libns3-dev libgsl-dev libhdf5-dev pkg-config (scripts/setup.sh does)" >&2
  exit 1
fi
# Debian's ns-3 .pc files carry a stray "-I/usr\;" entry; drop it.
FLAGS="$(pkg-config --cflags --libs $MODULES | tr ' ' '\n' | grep -v ';' | tr '\n' ' ')"
CXX=${CXX:-g++}
mkdir -p build
# One build at a time (tests may call this script from parallel threads).
exec 9>build/lock
flock 9
STAMP="$( (cat rps-netsim.cc loss_budget.h build.sh; echo "$CXX $FLAGS") | sha256sum | cut -d' ' -f1)"
if [ -x build/rps-netsim ] && [ "$(cat build/stamp 2>/dev/null)" = "$STAMP" ]; then
  echo "$PWD/build/rps-netsim"
  exit 0
fi
echo "netsim/build.sh: compiling rps-netsim.cc" >&2
$CXX -std=c++17 -O2 -Wall -Wextra -o build/rps-netsim.tmp rps-netsim.cc $FLAGS
mv build/rps-netsim.tmp build/rps-netsim
echo "$STAMP" > build/stamp
echo "$PWD/build/rps-netsim"
