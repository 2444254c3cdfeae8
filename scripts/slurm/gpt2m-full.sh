#!/usr/bin/env bash
# GPT-2 medium (24 blocks), the whole pipeline on one 4-GPU node: 6 layers per GPU during SAE training.
# Launch from anywhere:  scripts/slurm/gpt2m-full.sh       (see docs/CLUSTER.md for monitoring and OOM)
# Every variable can also be overridden from the environment: TRAIN_BATCH=64 scripts/slurm/gpt2m-full.sh

# ---- edit these ----------------------------------------------------------------------------------------
RUN_NAME=${RUN_NAME:-gpt2m-full}                  # log: logs/slurm/gpt2m-full_<jobid>.out
# The A100 preset (SAE batch 4096; docs/CLUSTER.md). Our users' numbers: MODEL_CONFIG=configs/gpt2_medium.py
MODEL_CONFIG=${MODEL_CONFIG:-configs/gpt2_medium.py:a100}
WORKDIR=${WORKDIR:-runs/gpt2m}                    # keep it on a shared filesystem: checkpoints live here
STAGES=${STAGES:-all}                             # or e.g. extract,train
EXTRACT_BATCH=${EXTRACT_BATCH:-}                  # sequences of 512 tokens per forward pass; "" = the config's
TRAIN_BATCH=${TRAIN_BATCH:-}                      # SAE tokens per optimizer step per layer; "" = the config's
TIME_LIMIT=${TIME_LIMIT:-24:00:00}                # the job requeues itself 5 min before this
GPUS_PER_NODE=${GPUS_PER_NODE:-4}                 # one JAX process per GPU
NODES=${NODES:-1}
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
PARTITION=${PARTITION:-}                          # "" = the cluster's default
ACCOUNT=${ACCOUNT:-}
# --------------------------------------------------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/submit.sh"
