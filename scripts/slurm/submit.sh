#!/usr/bin/env bash
# Submits scripts/slurm/ghosttrack.sbatch with the variables of a run file (gpt2s-full.sh, gpt2m-full.sh)
# or of the environment, and prints the job id and the log to follow:
#
#   scripts/slurm/gpt2m-full.sh                                   # a run file sources this script
#   MODEL_CONFIG=configs/tiny.py RUN_NAME=tiny GPUS_PER_NODE=0 TASKS_PER_NODE=2 DEVICES_PER_TASK=2 \
#     TIME_LIMIT=10 scripts/slurm/submit.sh                       # or set everything yourself
#
# Extra arguments are passed to sbatch before the script (e.g. --dependency=afterok:123, --wait).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_NAME=${RUN_NAME:-ghosttrack}                 # job name; the log is $LOG_DIR/${RUN_NAME}_<jobid>.out
MODEL_CONFIG=${MODEL_CONFIG:-configs/gpt2_small.py}
WORKDIR=${WORKDIR:-runs/$RUN_NAME}
STAGES=${STAGES:-all}
EXTRACT_BATCH=${EXTRACT_BATCH:-}                 # "" = the config's value
TRAIN_BATCH=${TRAIN_BATCH:-}                     # "" = the config's value
TIME_LIMIT=${TIME_LIMIT:-24:00:00}               # sbatch --time
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}                # 0 = CPU only
TASKS_PER_NODE=${TASKS_PER_NODE:-$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))}  # one process per GPU
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
DEVICES_PER_TASK=${DEVICES_PER_TASK:-0}          # CPU only: simulated devices per process (tests)
PARTITION=${PARTITION:-}                         # "" = the cluster's default partition
ACCOUNT=${ACCOUNT:-}
LOG_DIR=${LOG_DIR:-$REPO/logs/slurm}
SIGNAL_LEAD=${SIGNAL_LEAD:-300}                  # seconds before the time limit to stop and requeue
MAX_RESTARTS=${MAX_RESTARTS:-10}
STOP_GRACE=${STOP_GRACE:-120}                    # seconds the pipeline gets to stop before a requeue
EXTRA_FLAGS=${EXTRA_FLAGS:-}                     # more flags for ghosttrack_jax.main
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

if [ "$GPUS_PER_NODE" -gt 0 ] && [ "$TASKS_PER_NODE" -ne "$GPUS_PER_NODE" ]; then
  echo "TASKS_PER_NODE=$TASKS_PER_NODE differs from GPUS_PER_NODE=$GPUS_PER_NODE: JAX gives each SLURM" \
    "task the GPU numbered SLURM_LOCALID, so use one task per GPU" >&2
  exit 64
fi
[ -x "$PYTHON" ] || { echo "no Python at $PYTHON: run 'make venv' or set PYTHON" >&2; exit 66; }
mkdir -p "$LOG_DIR"

opts=(--parsable --job-name="$RUN_NAME" --output="$LOG_DIR/${RUN_NAME}_%j.out" --open-mode=append
      --requeue --signal="B:USR1@$SIGNAL_LEAD" --time="$TIME_LIMIT" --nodes="$NODES"
      --ntasks-per-node="$TASKS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --chdir="$REPO")
if [ "$GPUS_PER_NODE" -gt 0 ]; then opts+=(--gpus-per-node="$GPUS_PER_NODE"); else opts+=(--gpus-per-node=0); fi
[ -z "$PARTITION" ] || opts+=(--partition="$PARTITION")
[ -z "$ACCOUNT" ] || opts+=(--account="$ACCOUNT")

export GT_REPO="$REPO" GT_CONFIG="$MODEL_CONFIG" GT_WORKDIR="$WORKDIR" GT_STAGES="$STAGES" \
  GT_EXTRACT_BATCH="$EXTRACT_BATCH" GT_TRAIN_BATCH="$TRAIN_BATCH" GT_EXTRA_FLAGS="$EXTRA_FLAGS" \
  GT_PYTHON="$PYTHON" GT_DEVICES_PER_TASK="$DEVICES_PER_TASK" GT_MAX_RESTARTS="$MAX_RESTARTS" GT_STOP_GRACE="$STOP_GRACE"
job=$(sbatch "${opts[@]}" --export=ALL "$@" "$REPO/scripts/slurm/ghosttrack.sbatch")
job=${job%%;*}
echo "submitted job $job ($RUN_NAME): $MODEL_CONFIG -> $WORKDIR"
echo "  squeue -j $job          # state"
echo "  tail -f $LOG_DIR/${RUN_NAME}_$job.out"
