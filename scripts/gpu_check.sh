#!/usr/bin/env bash
# The GPU check of the accelerator path: NOT YET RUN ON A GPU (no GPU machine was available so far).
#
#   scripts/gpu_check.sh [--out DIR]      # on a GPU machine, from anywhere; about 5 minutes
#   scripts/gpu_check.sh --smoke          # CPU-sized, to check the script itself
#
# Runs configs/tiny.py and a GPT-2-small-shaped random model through extract and train, and times the
# trainer's step programs at GPT-2-medium shapes (scripts/gpu_check.py says what each section records).
# Prints one JSON line per figure and writes them to DIR/gpu_check.jsonl (default runs/gpu_check, or
# $OUT when set): step time, rows/s, the fraction of the loop the device waited for input, XLA's memory
# of each step against the planner's estimate, and --plan's time estimate beside the measured one.
# Record the figures in benchmarks/RESULTS.md after a run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
cd "$REPO"
export TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if [ "${1:-}" != "--smoke" ]; then
  "$PYTHON" -c 'import jax, sys; p = jax.devices()[0].platform; sys.exit(0 if p in ("gpu", "cuda") else
print(f"no GPU: jax sees {p} devices (install jax[cuda12] and run on a GPU node)", file=sys.stderr) or 3)'
fi
exec "$PYTHON" "$REPO/scripts/gpu_check.py" "$@"
