"""Command-line entry point: runs the pipeline stages for one config.

  python -m ghosttrack_jax.main --config=configs/smollm2_135m.py --workdir=runs/smollm2 \
      [--config.sae.width=4608 ...] [--stages=extract,train] [--plan]

Every stage skips itself when its outputs are complete and resumes when they are half written, so
rerunning the same command after a kill or a preemption continues where it stopped.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (its get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (cache/, checkpoints/, results/).")
_STAGES = flags.DEFINE_list(
    "stages", None, "Comma-separated stages to run (default: all): "
    "extract,train,answer,track,detect,evaluate,report.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize() (default: when run under srun with "
    "several tasks).")
flags.mark_flags_as_required(["config", "workdir"])


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ


def main(argv):
  del argv
  from ghosttrack_jax import config_lib, pipeline  # pylint: disable=import-outside-toplevel
  from ghosttrack_jax.errors import GhostTrackError  # pylint: disable=import-outside-toplevel

  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  stages = _STAGES.value or list(pipeline.STAGES)
  try:
    unknown = [s for s in stages if s not in pipeline.STAGES]
    if unknown:
      raise GhostTrackError(f"unknown stage(s) {unknown}: choose from {list(pipeline.STAGES)}")
    config_lib.validate(config)
    if _wants_distributed():
      import jax  # pylint: disable=import-outside-toplevel
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize()
      logging.info("process %d of %d, %d global devices", jax.process_index(), jax.process_count(),
                   jax.device_count())
    pipeline.run(config, _WORKDIR.value, stages)
  except GhostTrackError as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
