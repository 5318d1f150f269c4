#!/usr/bin/env bash
# A private single-node Slurm cluster on localhost for tests (Debian's slurm-wlm and
# munge, no systemd). Everything lives in DIR; nothing outside it is touched.
#   tests/slurm/cluster.sh start DIR   # prints the SLURM_CONF to export, waits for idle
#   tests/slurm/cluster.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}
dir=$(realpath -m "${2:?directory}")
conf=$dir/slurm.conf
sock=$dir/munge/munge.socket

stop() {
  if [ -f "$conf" ]; then
    SLURM_CONF=$conf timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  fi
  for p in slurmctld slurmd munged; do
    if [ -f "$dir/$p.pid" ]; then
      kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
    fi
  done
  sleep 1
  for p in slurmctld slurmd munged; do
    if [ -f "$dir/$p.pid" ]; then
      kill -9 "$(cat "$dir/$p.pid")" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi

for bin in slurmctld slurmd munged sbatch; do
  command -v "$bin" >/dev/null || { echo "cluster.sh: $bin missing (scripts/setup-slurm.sh installs slurm-wlm and munge)" >&2; exit 1; }
done
mkdir -p "$dir"/{munge,state,spool,log}
chmod 755 "$dir" "$dir/munge"
head -c 1024 /dev/urandom > "$dir/munge.key"
chmod 400 "$dir/munge.key"
munged --key-file "$dir/munge.key" --socket "$sock" --pid-file "$dir/munged.pid" \
  --log-file "$dir/log/munged.log" --seed-file "$dir/munge/seed" --force
for _ in $(seq 50); do
  munge -n -S "$sock" | unmunge -S "$sock" >/dev/null 2>&1 && break
  sleep 0.1
done
host=$(hostname -s)
cpus=${SLURM_TEST_CPUS:-8}
cat > "$conf" <<CONF
ClusterName=rpstest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${SLURM_TEST_PORT:-16817}
SlurmdPort=$(( ${SLURM_TEST_PORT:-16817} + 1 ))
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
MinJobAge=300
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$conf
slurmctld -D -f "$conf" >"$dir/log/slurmctld.out" 2>&1 &
slurmd -D -f "$conf" >"$dir/log/slurmd.out" 2>&1 &
for _ in $(seq 100); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  if [ "$state" = idle ]; then
    echo "$conf"
    exit 0
  fi
  sleep 0.2
done
echo "cluster.sh: the node never became idle; logs in $dir/log" >&2
tail -5 "$dir"/log/*.log >&2 || true
stop
exit 1
