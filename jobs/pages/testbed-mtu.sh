#!/usr/bin/env bash
# docs/results/testbed-mtu.md: UDP at MTU 1,500 against 9,000 with and without offloads
# (jobs/testbed-mtu.sh), and the loss budget under a 4-into-1 incast
# (jobs/testbed-budget.sh), both as root on the namespace testbed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/testbed-mtu
rm -rf "$OUT" "$OUT-budget"
jobs/testbed-mtu.sh "$OUT" >&2
jobs/testbed-budget.sh "$OUT-budget" >&2
echo "### MTU 1,500 against 9,000 (\`jobs/testbed-mtu.sh\`)"
echo
target/release/rps report --testbed "$OUT/index.csv"
echo
echo "### The loss budget under a 4-into-1 incast (\`jobs/testbed-budget.sh\`)"
echo
target/release/rps report --testbed "$OUT-budget/index.csv"
echo
# jobs/steady-loss.py reads the per-step columns with h5py, from its own environment.
VENV=target/py-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
"$VENV/bin/python" -c "import h5py" 2>/dev/null || "$VENV/bin/python" -m pip install -q h5py >&2
echo "The uplink loss, in all and once the budget has converged (\`jobs/steady-loss.py\`):"
echo
echo '```'
"$VENV/bin/python" jobs/steady-loss.py "$OUT-budget"/*.h5
echo '```'
