"""The ordered stage table and the runner that calls the stages in order, with multi-process roles.

A stage is `run(config, workdir)` in its subpackage's `stage` module; stages talk only through files
under the workdir, so each one can run alone (`--stages=track,detect`) and skips itself when complete.

Before any stage runs, an existing activation store is checked against the config (extract.stage.preflight),
so a changed model or corpus stops at once instead of training on old activations; when the answer
stage is to run, the question file is read and a finished answer folder made from other questions is
refused (answer.stage.preflight), so a bad or changed question file stops before extraction and training.

Several JAX processes (one per GPU under `srun`, runtime.multihost): *collective* stages
(`COLLECTIVE_STAGES`: extraction, each process its own chunk groups; SAE training, the layer shards
spread over all processes' devices) are run by every process, and each writes its shared outputs from
process 0 only. Every other stage is run by process 0
alone; the others wait at a barrier of the coordination service until it is done, so their outputs are
identical to a single-process run and no two processes ever write the same file.
"""

import logging
import time

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.extract import stage as extract_stage
from ghosttrack_jax.report import stage as report_stage
from ghosttrack_jax.runtime import multihost
from ghosttrack_jax.track import stage as track_stage
from ghosttrack_jax.train import stage as train_stage

# Stage name -> entry point. The order is the execution order.
STAGES = {
  "extract": extract_stage.run,
  "train": train_stage.run,
  "answer": answer_stage.run,
  "track": track_stage.run,
  "detect": detect_stage.run,
  "evaluate": evaluate_stage.run,
  "report": report_stage.run,
}
assert tuple(STAGES) == config_lib.STAGES

# Stages whose `run(config, workdir)` every process must call. The others run on process 0 only.
COLLECTIVE_STAGES = frozenset({"extract", "train"})
# Stages that read the activation store: the store is checked against the config before they run.
STORE_STAGES = frozenset({"extract", "train"})
# What `config.sae.source` (SAEs trained elsewhere) replaces.
TRAINING_STAGES = ("extract", "train")


def _run_one(name: str, config, workdir: str) -> None:
  logging.info("=== stage %s ===", name)
  t0 = time.time()
  STAGES[name](config, workdir)
  logging.info("=== stage %s finished in %.1f s ===", name, time.time() - t0)


def run(config, workdir: str, stages=tuple(STAGES)) -> None:
  """Runs `stages` in pipeline order with the roles described in the module docstring."""
  ordered = [name for name in STAGES if name in stages]
  if config.sae.source and set(TRAINING_STAGES) & set(ordered):
    logging.info("SAEs from config.sae.source=%s: stages %s do not run", config.sae.source, TRAINING_STAGES)
    ordered = [name for name in ordered if name not in TRAINING_STAGES]
  if STORE_STAGES & set(ordered):
    extract_stage.preflight(config, workdir)
  if "answer" in ordered:
    answer_stage.preflight(config, workdir)
  if multihost.process_count() == 1:
    for name in ordered:
      _run_one(name, config, workdir)
    return
  for name in ordered:
    if name in COLLECTIVE_STAGES or multihost.is_primary():
      _run_one(name, config, workdir)
    else:
      logging.info("=== stage %s runs on process 0; waiting ===", name)
    multihost.barrier(f"ghosttrack_stage_{name}")
