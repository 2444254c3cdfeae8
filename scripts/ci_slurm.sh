#!/usr/bin/env bash
# Starts and stops a throw-away single-node SLURM cluster for CI and tests (docs/environment.md §8.2).
#
#   scripts/ci_slurm.sh start ROOT   # writes ROOT/slurm.conf, starts munged (if needed), slurmctld, slurmd
#   scripts/ci_slurm.sh stop ROOT    # cancels jobs, stops the daemons by their PID files
#   scripts/ci_slurm.sh status ROOT  # exits 0 when the node is up
#
# After `start`, every client command needs `export SLURM_CONF=ROOT/slurm.conf` (sbatch exports it into the
# job, so srun inside finds it). Needs root and the Debian packages slurmctld slurmd slurm-client munge.
# Nothing is stopped by name: only the PIDs in ROOT/run/*.pid, and munged only if this script started it.
# Ports: CI_SLURM_CTLD_PORT / CI_SLURM_D_PORT (default: two free ports), so that two clusters can coexist.
# CPUs of the node: CI_SLURM_CPUS (default 4: 4 tasks on 2 cores need SlurmdParameters=config_overrides).
set -euo pipefail

cmd=${1:-}
ROOT=${2:-}
if [ -z "$cmd" ] || [ -z "$ROOT" ]; then
  echo "usage: $0 start|stop|status ROOT" >&2
  exit 64
fi
ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
export SLURM_CONF=$ROOT/slurm.conf
MUNGE_PID=/run/munge/munged.pid

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

stop_pid() {  # stop_pid PIDFILE: SIGTERM, wait up to 10 s (a zombie counts as stopped), then SIGKILL
  [ -s "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

running() {  # running PIDFILE
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$(cat "$1")/status" 2>/dev/null
}

node_idle() {
  local state
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]
}

write_conf() {
  local ctld_port=${CI_SLURM_CTLD_PORT:-$(free_port)}
  local d_port=${CI_SLURM_D_PORT:-$(free_port)}
  local cpus=${CI_SLURM_CPUS:-4}
  mkdir -p "$ROOT"/{state,spool,log,run}
  cat > "$SLURM_CONF" <<EOF
ClusterName=localci
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=4
MailProg=/bin/true
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  for exe in slurmctld slurmd sbatch munged; do
    command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] || {
      echo "$exe is not installed: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge" >&2
      exit 69
    }
  done
  if running "$ROOT/run/slurmctld.pid"; then
    echo "a cluster is already running in $ROOT" >&2
    exit 1
  fi
  rm -rf "$ROOT/state" "$ROOT/spool"  # a clean start: no old job ids, no drained node
  write_conf
  if ! running "$MUNGE_PID"; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$ROOT/run/munged.started-here"
  fi
  munge -n | unmunge >/dev/null
  slurmctld
  slurmd -N localhost
  for _ in $(seq 120); do
    if node_idle; then
      echo "SLURM up: export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "the SLURM node never became idle; logs in $ROOT/log:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$ROOT"/log/*.log >&2 || true
  exit 1
}

stop() {
  if [ -f "$SLURM_CONF" ] && running "$ROOT/run/slurmctld.pid"; then
    scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 100); do  # at most 20 s for the jobs to go
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  stop_pid "$ROOT/run/slurmd.pid"
  stop_pid "$ROOT/run/slurmctld.pid"
  if [ -e "$ROOT/run/munged.started-here" ]; then
    stop_pid "$MUNGE_PID"
    rm -f "$ROOT/run/munged.started-here"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) node_idle ;;
  *) echo "unknown command $cmd: use start, stop or status" >&2; exit 64 ;;
esac
