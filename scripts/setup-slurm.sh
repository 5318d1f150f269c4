#!/usr/bin/env bash
# Installs Debian's Slurm and munge (idempotent) for the Slurm tests: the single-node
# cluster (tests/slurm.rs) and the multi-node one on the namespace testbed
# (tests/slurm_multinode.rs, which also needs scripts/setup.sh's iproute2, nftables,
# ethtool). scripts/test.sh runs it. Not needed to use rps.
set -euo pipefail
missing=()
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-slurm: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
