"""The transfer command: detectors fit on one question set, scored on another, then the report rebuilt.

  python -m ghosttrack_jax.tools.transfer --config=configs/smollm2_135m.py --workdir=runs/smollm2_135m \
      [--datasets=wikidata,squad,jsonl]

Every set named (default: every set with a finished evaluation in the workdir) must have been run through
the pipeline in this workdir with this model and these SAEs, e.g. the default (wikidata), then
`--config=configs/smollm2_135m_study.py:squad`, then a question file of your own with
`--config.qa.dataset=jsonl --config.qa.path=my_questions.jsonl`. Writes
results/<model>/evaluation/transfer.json (evaluate/transfer.py says what each cell is) and rebuilds the
report, which shows one matrix per method.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import GhostTrackError
from ghosttrack_jax.evaluate import transfer
from ghosttrack_jax.report import gather
from ghosttrack_jax.report import stage as report_stage
from ghosttrack_jax.runtime import paths

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file in configs/ (the model and SAEs of the runs).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir the question sets were run in.")
_DATASETS = flags.DEFINE_list("datasets", None, "Question sets (default: every evaluated one).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    config = _CONFIG.value
    config_lib.validate(config, stages=("report",))
    names = _DATASETS.value or gather.evaluated_datasets(paths.for_config(config, _WORKDIR.value))
    transfer.run(config, _WORKDIR.value, names)
    html = report_stage.run(config, _WORKDIR.value)
  except GhostTrackError as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(2)
  logging.info("transfer: %s; report %s", transfer.path(config, _WORKDIR.value), html)


if __name__ == "__main__":
  app.run(main)
