"""The ordered stage table. A stage is `run(config, workdir)` in its own module, imported lazily."""

import importlib
import logging
import time

from ghosttrack_jax import config_lib

# Stage name -> "module:function". The order is the execution order.
STAGES = {
    "extract": "ghosttrack_jax.extract:run",
    "train": "ghosttrack_jax.sae_train:run",
    "answer": "ghosttrack_jax.answers:run",
    "track": "ghosttrack_jax.tracking_stage:run",
    "detect": "ghosttrack_jax.detect:run",
    "evaluate": "ghosttrack_jax.evaluate:run",
    "report": "ghosttrack_jax.report:run",
}
assert tuple(STAGES) == config_lib.STAGES


def stage_function(name: str):
  module_name, fn = STAGES[name].split(":")
  return getattr(importlib.import_module(module_name), fn)


def run(config, workdir: str, stages=tuple(STAGES)) -> None:
  """Runs `stages` in pipeline order. Each stage skips itself when its outputs are complete."""
  for name in STAGES:
    if name not in stages:
      continue
    logging.info("=== stage %s ===", name)
    t0 = time.time()
    stage_function(name)(config, workdir)
    logging.info("=== stage %s finished in %.1f s ===", name, time.time() - t0)
