#!/usr/bin/env bash
# A multi-host testbed on one machine: K "hosts" as network namespaces joined by a bridge
# in a namespace of its own, with real packet loss imposed on the bridge. rps runs
# across the hosts with OpenMPI, launched without ssh. Needs root (ip netns), iproute2,
# nftables and ethtool (scripts/setup.sh installs them). The root namespace is never
# touched: no interface, route, rule or sysctl of it changes, and no traffic leaves the
# testbed.
#
#   testbed/testbed.sh up K [--loss P] [--mtu BYTES] [--cc cubic|bbr|reno] [--rto-min MS]
#                           [--host-gro on|off] [--rate RATE]
#   testbed/testbed.sh loss P          change the loss rate of a running testbed
#   testbed/testbed.sh run CMD...      run CMD inside host 0 (e.g. `mpirun ...`)
#   testbed/testbed.sh mpirun ARGS...  mpirun across every host, one rank per host
#   testbed/testbed.sh counters        packets seen and dropped by the loss rule
#   testbed/testbed.sh status | down
#
# TESTBED_NAME (default rpstb) prefixes the namespaces: NAME-br (the bridge) and
# NAME-h0 … NAME-h{K-1}; host i has address 10.99.0.(i+1)/24 on its eth0
# (TESTBED_NET, default 10.99.0, changes the first three octets).
#
# Loss: an nftables rule on the bridge's forward hook drops each IPv4 packet with
# probability P, independently, in both directions (ARP is spared). TSO and GSO
# (UDP's included) are off on every veth and GRO on every bridge port, so what crosses the bridge (and is
# dropped) is one wire packet, never a 64 KB super-packet. Each host's own interface
# coalesces what it receives (GRO, after the bridge), as a real host's NIC does;
# `--host-gro off` turns that off too.
# TCP congestion control and minimum RTO are set per route on each host.
#
# Rate: `--rate RATE` (tc's units: 20mbit, 1gbit) makes every host's link that fast
# towards the host: a token bucket (tbf) on each bridge port, with a queue of 100
# packets, so that n hosts sending to one at once congest its port as on a switch.
set -euo pipefail

NAME=${TESTBED_NAME:-rpstb}
NET=${TESTBED_NET:-10.99.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=/run/rps-testbed/$NAME

die() { echo "testbed: $*" >&2; exit 1; }
br() { ip netns exec "$NAME-br" "$@"; }
hosts() { cat "$STATE/hosts" 2>/dev/null || true; }

need() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
    for c in ip nft ethtool ping; do
        command -v "$c" >/dev/null || die "$c not found; run scripts/setup.sh (it installs iproute2, nftables, ethtool, iputils-ping)"
    done
}

# The nft rule for a loss probability P (0 ≤ P ≤ 1).
loss_rule() {
    local p=$1 n
    n=$(awk -v p="$p" 'BEGIN { if (p !~ /^[0-9.]+$/ || p < 0 || p > 1) exit 1; printf "%d", p * 1000000 + 0.5 }') ||
        die "loss $p is not a probability in [0, 1]"
    cat <<NFT
table bridge impair {
    chain lossy {
        type filter hook forward priority 0; policy accept;
        ether type ip counter numgen random mod 1000000 < $n counter drop
    }
}
NFT
}

set_loss() {
    local p=$1 rules
    rules=$(loss_rule "$p")
    br nft delete table bridge impair 2>/dev/null || true
    echo "$rules" | br nft -f -
    echo "$p" > "$STATE/loss"
}

up() {
    local k=${1:-}; shift || true
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le 200 ] || die "up: K must be a number of hosts from 1 to 200, got '${k}'"
    local loss=0 mtu=1500 cc=cubic rto="" gro=on rate=""
    while [ $# -gt 0 ]; do
        case $1 in
            --loss) loss=${2:?--loss needs P}; shift 2 ;;
            --mtu) mtu=${2:?--mtu needs BYTES}; shift 2 ;;
            --cc) cc=${2:?--cc needs a congestion control}; shift 2 ;;
            --rto-min) rto=${2:?--rto-min needs MS}; shift 2 ;;
            --host-gro) gro=${2:?--host-gro needs on or off}; shift 2 ;;
            --rate) rate=${2:?--rate needs a rate such as 20mbit}; shift 2 ;;
            *) die "up: unknown option $1" ;;
        esac
    done
    [[ "$mtu" =~ ^[0-9]+$ ]] && [ "$mtu" -ge 576 ] && [ "$mtu" -le 9216 ] || die "--mtu $mtu must be from 576 to 9216"
    [ -z "$rto" ] || [[ "$rto" =~ ^[0-9]+$ ]] || die "--rto-min $rto must be milliseconds"
    [ "$gro" = on ] || [ "$gro" = off ] || die "--host-gro $gro must be on or off"
    [ -z "$rate" ] || [[ "$rate" =~ ^[0-9]+(\.[0-9]+)?([kmg]?bit)$ ]] || die "--rate $rate must be a rate such as 20mbit or 1gbit"
    [ -z "$rate" ] || command -v tc >/dev/null || die "tc not found; run scripts/setup.sh (it installs iproute2)"
    loss_rule "$loss" >/dev/null
    need
    [ ! -e "$STATE" ] || die "testbed $NAME is already up (testbed.sh down first)"
    mkdir -p "$STATE"
    trap 'echo "testbed: set-up failed, tearing down" >&2; down' EXIT
    ip netns add "$NAME-br"
    br ip link set lo up
    br ip link add br0 type bridge
    br ip link set br0 mtu "$mtu" up
    # Bridged packets need no IP-layer netfilter (the loss rule is in the bridge family),
    # and where br_netfilter is loaded it costs every packet on this software network.
    br sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
        net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
    : > "$STATE/hosts"
    for i in $(seq 0 $((k - 1))); do
        local h="$NAME-h$i"
        ip netns add "$h"
        echo "$h" >> "$STATE/hosts"
        # Created inside the bridge namespace, so no interface ever appears in the root one.
        br ip link add "v$i" mtu "$mtu" type veth peer name eth0 netns "$h"
        br ip link set "v$i" master br0 up
        br ethtool -K "v$i" tso off gso off gro off >/dev/null 2>&1 || true
        br ethtool -K "v$i" tx-udp-segmentation off tx-gso-list off >/dev/null 2>&1 || true
        if [ -n "$rate" ]; then
            br tc qdisc replace dev "v$i" root tbf rate "$rate" burst $((2 * mtu)) limit $((100 * mtu)) ||
                die "cannot limit port v$i to $rate (tc tbf)"
        fi
        ip netns exec "$h" ip link set lo up
        ip netns exec "$h" ip link set eth0 mtu "$mtu" up
        ip netns exec "$h" ip addr add "$NET.$((i + 1))/24" dev eth0
        ip netns exec "$h" ethtool -K eth0 tso off gso off gro "$gro" >/dev/null 2>&1 || true
        # UDP segmentation offload (rps's UDP transport sends with it) must be done by
        # the sending host, before the bridge: a veth would pass the 64 KB buffer on.
        ip netns exec "$h" ethtool -K eth0 tx-udp-segmentation off tx-gso-list off >/dev/null 2>&1 || true
        ip netns exec "$h" ip route replace "$NET.0/24" dev eth0 congctl "$cc" ${rto:+rto_min "${rto}ms"}
    done
    set_loss "$loss"
    printf '%s\n' "mtu=$mtu" "cc=$cc" "rto_min_ms=${rto:-default}" "host_gro=$gro" "rate=${rate:-unlimited}" > "$STATE/config"
    # Reachability: host 0 pings every host (loss may eat some; three tries each).
    for i in $(seq 1 $((k - 1))); do
        ip netns exec "$NAME-h0" ping -c 3 -W 1 -i 0.2 -q "$NET.$((i + 1))" >/dev/null ||
            die "host 0 cannot reach host $i"
    done
    trap - EXIT
    echo "testbed $NAME: $k hosts $NET.1–$NET.$k, loss $loss per packet, MTU $mtu, TCP $cc${rto:+, rto_min ${rto} ms}, host GRO $gro${rate:+, ports at $rate}"
}

down() {
    local h
    for h in $(hosts) $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(h[0-9]+|br)$" || true); do
        # Processes left in a host (a killed run) would keep its namespace alive.
        ip netns pids "$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$h" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

status() {
    [ -e "$STATE" ] || { echo "testbed $NAME: down"; return 0; }
    echo "testbed $NAME: up, hosts $(hosts | tr '\n' ' ')loss $(cat "$STATE/loss") $(tr '\n' ' ' < "$STATE/config")"
}

# OpenMPI across the hosts: mpirun inside host 0, daemons started in the other
# namespaces by testbed/netns-rsh (no ssh), TCP only, restricted to the testbed subnet.
# Every host gets its namespace's name as host name (a UTS namespace each), as real
# hosts have distinct names: OpenMPI keys its session directories by host name.
# No binding, and no runtime-control component: OpenMPI 4.1's rtc/hwloc shares the
# topology through a shared-memory segment mapped at a guessed address, and a daemon
# crashed there (SIGSEGV in hwloc_shmem_topology_write) twice in about 50 launches here.
run_mpirun() {
    [ -e "$STATE" ] || die "testbed $NAME is down (testbed.sh up K first)"
    local hostfile="$STATE/hostfile"
    hosts | sed 's/$/ slots=1/' > "$hostfile"
    ip netns exec "$NAME-h0" unshare --uts /bin/sh -c 'hostname "$1" && shift && exec "$@"' sh "$NAME-h0" \
        env PMIX_MCA_gds=hash OMPI_MCA_plm_rsh_agent="$HERE/netns-rsh" \
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpirun --hostfile "$hostfile" -n "$(hosts | wc -l)" --map-by node --bind-to none --mca rtc ^hwloc \
        --mca btl tcp,self --mca btl_tcp_if_include "$NET.0/24" --mca oob_tcp_if_include "$NET.0/24" \
        "$@"
}

counters() {
    br nft list table bridge impair | awk '/counter/ {
        for (i = 1; i <= NF; i++) if ($i == "packets") { v[n++] = $(i + 1) } }
        END { printf "packets %d dropped %d\n", v[0], v[1] }'
}

cmd=${1:-}; shift || true
case $cmd in
    up) up "$@" ;;
    down) need; down ;;
    loss) need; [ -e "$STATE" ] || die "testbed $NAME is down"; set_loss "${1:?loss needs P}" ;;
    run) [ -e "$STATE" ] || die "testbed $NAME is down"; ip netns exec "$NAME-h0" "$@" ;;
    mpirun) run_mpirun "$@" ;;
    counters) counters ;;
    status) status ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = help ] || exit 2 ;;
esac
