#!/usr/bin/env bash
# docs/results/quickstart.md: scripts/quickstart.sh, timed (the build and the converted
# data already present), and what it printed. Progress on stderr; the page's tables on
# stdout (scripts/results.sh quickstart.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS=0
out=$(scripts/quickstart.sh)
secs=$SECONDS
echo "$out" >&2
final=$(grep '^final test accuracy' <<<"$out")
# final test accuracy A (test loss L, consensus distance C) after S steps in T s; dropped D of N messages; metrics: F
read -r acc loss steps train dropped attempted < <(sed -E 's/^final test accuracy ([0-9.]+) \(test loss ([0-9.]+),.*after ([0-9]+) steps in ([0-9.]+) s; dropped ([0-9]+) of ([0-9]+).*/\1 \2 \3 \4 \5 \6/' <<<"$final")
cat <<MD
RPS, 1 server + 4 workers, p = 0.1, one epoch of Fashion-MNIST (batch 32 per worker),
\`mpirun -n 5\` on this machine.

| final test accuracy | test loss | steps | messages dropped | training time | whole script |
|---|---|---|---|---|---|
| $acc | $loss | $steps | $dropped of $attempted | $train s | $secs s |

The run's last line, verbatim:

\`\`\`
$final
\`\`\`
MD
