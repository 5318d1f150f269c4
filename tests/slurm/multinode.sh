#!/usr/bin/env bash
# A private multi-node Slurm on one machine, for tests: the namespace testbed's hosts
# (testbed/testbed.sh) become a login node and N compute nodes. Host 0 runs munged and
# slurmctld and is where jobs are submitted; hosts 1…N each run one slurmd. Every host
# has its own network namespace, address (TESTBED_NET.1, .2, …), host name (a UTS
# namespace: the namespace's name) and spool, log and pid files; munge's socket is
# shared through the file system. Debian's slurm-wlm and munge, no systemd, nothing
# outside DIR and the testbed's namespaces is touched.
#
#   tests/slurm/multinode.sh start DIR [N]    # N compute nodes (default 4); prints SLURM_CONF
#   tests/slurm/multinode.sh exec DIR CMD...  # CMD on the login node, SLURM_CONF set
#   tests/slurm/multinode.sh kill-node DIR I  # kill compute node I: its slurmd, jobs, ranks
#   tests/slurm/multinode.sh stop DIR         # idempotent; also clears a failed run's leftovers
#
# DIR holds the configuration, state, spool, logs and each node's /tmp (DIR/nodes/H/tmp);
# it must not be under /tmp. `stop` ends every daemon and job (they all live in the
# testbed's namespaces, which it removes) and keeps DIR's logs; `start` begins with a
# `stop` and clears DIR's state, so a failed run never leaks into the next one.
#
# TESTBED_NAME (default rpsslurm) and TESTBED_NET (default 10.98.0) choose the testbed,
# so it never collides with the default one (rpstb, 10.99.0). Needs root, iproute2,
# nftables, ethtool, ping (scripts/setup.sh), util-linux's unshare, and slurm-wlm and
# munge (scripts/setup-slurm.sh). Exits with status 77 and says why when this machine
# cannot run it (not root, no network or UTS namespaces, a program missing), so tests
# can skip; 1 when the cluster itself fails to come up (logs in DIR/log).
set -euo pipefail
export TESTBED_NAME=${TESTBED_NAME:-rpsslurm}
export TESTBED_NET=${TESTBED_NET:-10.98.0}
NAME=$TESTBED_NAME
NET=$TESTBED_NET
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBED=$HERE/../../testbed/testbed.sh
cmd=${1:-}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case $cmd in
    start|stop|exec|kill-node) [ -n "${2:-}" ] || { usage >&2; exit 2; } ;;
    help|-h|--help|"") usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
dir=$(realpath -m "$2")
conf=$dir/slurm.conf
sock=$dir/munge/munge.socket

skip() { echo "multinode.sh: cannot run here: $*" >&2; exit 77; }
die() { echo "multinode.sh: $*" >&2; exit 1; }

# Runs "$@" on host H: its network namespace, H as host name (a UTS namespace) and a
# /tmp of its own (a mount namespace; real nodes do not share /tmp, and Slurm's PMIx
# plugin and OpenMPI keep per-job directories there under names that would collide).
# nsenter rather than `ip netns exec`: the latter mounts a fresh /sys, which hides the
# cgroup file systems slurmd reads at start (it refuses to start without them).
on() {
    local h=$1; shift
    mkdir -p "$dir/nodes/$h/tmp"
    chmod 1777 "$dir/nodes/$h/tmp"
    nsenter --net="/run/netns/$h" unshare --uts --mount --propagation private /bin/sh -c \
        'hostname "$1" && mount --bind "$2" /tmp && shift 2 && exec "$@"' sh "$h" "$dir/nodes/$h/tmp" "$@"
}

login() { ip netns exec "$NAME-h0" env SLURM_CONF="$conf" "$@"; }

stop() {
    # Everything the cluster started lives in the testbed's namespaces (munged included),
    # so taking the testbed down ends it all; a clean shutdown first lets slurmctld save
    # nothing half-written.
    if [ -f "$conf" ] && ip netns list 2>/dev/null | grep -q "^$NAME-h0\b"; then
        login timeout 5 scontrol shutdown >/dev/null 2>&1 || true
    fi
    "$TESTBED" down >/dev/null 2>&1 || true
    rm -f "$dir"/*.pid
}

start() {
    local n=${1:-4}
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 16 ] ||
        die "start: N must be a number of compute nodes from 1 to 16, got '$n'"
    case $dir/ in
        /tmp/*) die "start: DIR $dir is under /tmp, which every node replaces by its own" ;;
    esac
    [ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
    for bin in ip nft ethtool ping unshare nsenter munged munge unmunge slurmctld slurmd sbatch srun; do
        command -v "$bin" >/dev/null ||
            skip "$bin not found (scripts/setup.sh installs the testbed's tools, scripts/setup-slurm.sh slurm-wlm and munge)"
    done
    local probe="$NAME-probe$$" why
    why=$(ip netns add "$probe" 2>&1) || skip "network namespaces cannot be created ($why)"
    why=$(nsenter --net="/run/netns/$probe" unshare --uts --mount --propagation private \
        /bin/sh -c 'hostname probe && mount --bind / /mnt' 2>&1) || {
        ip netns del "$probe"; skip "UTS or mount namespaces cannot be created ($why)"; }
    ip netns del "$probe"

    stop # a previous run's leftovers: daemons, namespaces, pid files
    "$TESTBED" up "$((n + 1))" >/dev/null || die "testbed/testbed.sh up $((n + 1)) failed"
    rm -rf "$dir"/{state,spool,log,munge,nodes}
    mkdir -p "$dir"/{munge,state,spool,log}
    chmod 755 "$dir" "$dir/munge"
    head -c 1024 /dev/urandom > "$dir/munge.key"
    chmod 400 "$dir/munge.key"
    # munged in the login node's namespace: its socket is a file, so every namespace on
    # this machine reaches it, and `testbed.sh down` ends it with the rest.
    ip netns exec "$NAME-h0" munged --key-file "$dir/munge.key" --socket "$sock" \
        --pid-file "$dir/munged.pid" --log-file "$dir/log/munged.log" \
        --seed-file "$dir/munge/seed" --force ||
        skip "munged did not start (log: $dir/log/munged.log)"
    local ok=
    for _ in $(seq 50); do
        if munge -n -S "$sock" | unmunge -S "$sock" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    [ -n "$ok" ] || skip "munge does not answer on $sock (log: $dir/log/munged.log)"

    # A requeued job waits cred_expire seconds (120 by default) before it may start
    # again; tests shorten the wait (MULTINODE_CRED_EXPIRE).
    local i cred_expire=${MULTINODE_CRED_EXPIRE:-120}
    {
        cat <<CONF
ClusterName=rpsmulti
SlurmctldHost=$NAME-h0($NET.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$sock,cred_expire=$cred_expire
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
MailProg=/bin/true
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmdTimeout=10
CONF
        for i in $(seq 1 "$n"); do
            echo "NodeName=$NAME-h$i NodeAddr=$NET.$((i + 1)) CPUs=2 State=UNKNOWN"
        done
        echo "PartitionName=test Nodes=$NAME-h[1-$n] Default=YES MaxTime=INFINITE State=UP"
    } > "$conf"
    on "$NAME-h0" slurmctld -D -f "$conf" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/spool/$NAME-h$i"
        on "$NAME-h$i" slurmd -D -f "$conf" </dev/null >"$dir/log/slurmd-$NAME-h$i.out" 2>&1 &
    done
    local idle
    for _ in $(seq 150); do
        idle=$(login sinfo -h -N -t idle -o %N 2>/dev/null | wc -l || true)
        if [ "$idle" = "$n" ]; then
            echo "$conf"
            return 0
        fi
        sleep 0.2
    done
    echo "multinode.sh: $idle of $n nodes became idle; logs in $dir/log" >&2
    login sinfo -N >&2 || true
    tail -n 5 "$dir"/log/*.log >&2 || true
    stop
    exit 1
}

# Kills compute node I as a power failure would, seen from the others: every process in
# its namespace (slurmd, the job's slurmstepd, orted and ranks) at once, with SIGKILL.
kill_node() {
    local h="$NAME-h${1:?kill-node needs a node number}"
    ip netns list | grep -q "^$h\b" || die "kill-node: no node $h"
    ip netns pids "$h" | xargs -r kill -9
}

case $cmd in
    start) shift 2; start "$@" ;;
    stop) stop ;;
    exec) shift 2; [ -f "$conf" ] || die "no cluster in $dir (start it first)"; login "$@" ;;
    kill-node) kill_node "${3:-}" ;;
esac
