#!/usr/bin/env bash
# A single-node Slurm cluster on this machine for the sweep tests (Debian's slurm-wlm + munge, no
# systemd): `tools/slurm_local.sh start` sets up munge and a minimal slurm.conf, starts munged,
# slurmctld and slurmd in the background and waits until the node is idle; `stop` ends them.
# Needs root and `apt-get install slurm-wlm munge` (.ci/run installs them).
set -euo pipefail
state=/var/spool/quantlab-slurm
case "${1:-start}" in
start)
  command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed" >&2; exit 1; }
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm: already running"; exit 0; fi
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2/1024) - 1024}' /proc/meminfo)
  mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge "$state"/{ctld,d} /etc/slurm
  if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown -R munge: /etc/munge /var/log/munge /run/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=quantlab
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=${state}/ctld
SlurmdSpoolDir=${state}/d
ReturnToService=2
SlurmctldLogFile=${state}/slurmctld.log
SlurmdLogFile=${state}/slurmd.log
NodeName=${host} CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
  pgrep -x slurmctld >/dev/null || (setsid slurmctld -D >/dev/null 2>&1 &)
  pgrep -x slurmd >/dev/null || (setsid slurmd -D >/dev/null 2>&1 &)
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm: node ${host} idle"; exit 0; fi
    sleep 1
  done
  echo "slurm: the node did not become idle; see ${state}/*.log" >&2
  exit 1
  ;;
stop)
  pkill -x slurmd || true
  pkill -x slurmctld || true
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
