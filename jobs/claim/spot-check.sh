#!/usr/bin/env bash
# Reruns run INDEX of a sweep job file with the current binary (`rps sweep --index I
# --rerun`) and prints whether its metrics file came out bit for bit the same (`rps
# digest`): the runs of a long sweep may have been made by earlier builds, and this shows
# that the binary a page is written with still computes them.
#   jobs/claim/spot-check.sh JOB INDEX
set -euo pipefail
cd "$(dirname "$0")/../.."
job=$1 index=$2
file=$(target/release/rps sweep "$job" --list | awk -F'\t' -v i="$index" '$1 == i { sub(/ \(completed\)$/, "", $3); print $3 }')
[ -n "$file" ] || { echo "spot-check: $job has no run $index" >&2; exit 2; }
before=$(target/release/rps digest --short "$file" | awk '$2 == "all" { print $1 }')
target/release/rps sweep "$job" --index "$index" --rerun >&2
after=$(target/release/rps digest --short "$file" | awk '$2 == "all" { print $1 }')
if [ "$before" = "$after" ]; then
  echo "- \`$file\` rerun with this build: same digest ($after)"
else
  echo "- \`$file\` rerun with this build: **digest changed** ($before → $after); the page's runs are not all this build's"
fi
