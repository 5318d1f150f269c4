#!/usr/bin/env bash
# docs/results/interrupt-resume.md: a run stopped by SIGUSR1 and resumed against the
# same run left alone (jobs/interrupt-resume.sh); compared by rps digest.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/interrupt-resume
jobs/interrupt-resume.sh "$OUT" >&2
full=$(target/release/rps digest --short "$OUT/full.h5" "$OUT/full-model.h5" | awk '/ all$/ {print $1}' | paste -sd' ')
part=$(target/release/rps digest --short "$OUT/part.h5" "$OUT/part-model.h5" | awk '/ all$/ {print $1}' | paste -sd' ')
stopped=$(h5dump -a /resumed_at_step "$OUT/part.h5" 2>/dev/null | awk -F'"' '/\(0\)/ {print $2}')
echo "1 server + 4 workers, p = 0.1, 300 steps, checkpoints every 50; SIGUSR1 to mpirun after 15 s, then \`--resume\`."
echo
echo "| run | digests (metrics file, saved model) | final test accuracy |"
echo "|---|---|---|"
for r in full part; do
  acc=$(h5dump -a /final_test_accuracy "$OUT/$r.h5" | awk '/\(0\)/ {print $2}')
  d=$full; [ $r = part ] && d=$part
  name="uninterrupted"; [ $r = part ] && name="stopped, resumed at step ${stopped:-?}"
  echo "| $name | \`$d\` | $acc |"
done
echo
if [ "$full" = "$part" ]; then
  echo "Every non-timing dataset and the saved parameters: **identical** (rps digest)."
else
  echo "The runs **differ** (rps digest)."
fi
