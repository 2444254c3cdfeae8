"""The scoring CLI: scores one question (and optionally an answer) with a trained GhostTrack detector.

  python -m ghosttrack_jax.tools.score_cli --config=configs/smollm2_135m.py --workdir=runs/smollm2 \
      --question="who wrote the origin of species" [--answer="Charles Darwin"] [--classifier=logistic] \
      [--dashboard=answer.html]

Without --answer the model answers the question itself (own-answer mode, as in training); with --answer
the given text is teacher-forced after the same prompt. Prints one JSON object: the probability that the
answer is a hallucination, the decision at the training-chosen threshold, the 26 metrics, per-layer track
statistics and the tracks themselves. Needs the `train`, `answer`, `track` and `detect` stages done.
"""

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ghosttrack_jax import config_lib
from ghosttrack_jax.detect import score
from ghosttrack_jax.report import dashboard
from ghosttrack_jax.tools import command_line

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file in configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir of the pipeline run.")
_QUESTION = flags.DEFINE_string("question", None, "The question to score.")
_ANSWER = flags.DEFINE_string("answer", None, "An answer to score; omitted = the model answers.")
_CLASSIFIER = flags.DEFINE_string("classifier", "logistic", "Which saved detector to use.")
_DATASET = flags.DEFINE_string("dataset", None, "Detector of this dataset (default config.qa.dataset).")
_TRACKS = flags.DEFINE_bool("tracks", True, "Include the full track arrays in the output.")
_DASHBOARD = flags.DEFINE_string("dashboard", None, "Also write the interactive HTML dashboard here.")
flags.mark_flags_as_required(["config", "workdir", "question"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  try:
    config_lib.validate(_CONFIG.value, stages=("answer", "track"))  # the prompt, the model and the SAEs
    out = score.score_question(
      _CONFIG.value,
      _WORKDIR.value,
      _QUESTION.value,
      _ANSWER.value,
      classifier=_CLASSIFIER.value,
      dataset=_DATASET.value,
    )
  except Exception as e:  # noqa: BLE001  (one line for what the user can fix; a bug keeps its traceback)
    line = command_line.error_line(e, _WORKDIR.value)
    if line is None:
      raise
    logging.error("%s", line)
    sys.exit(command_line.EXIT_ERROR)
  if _DASHBOARD.value:
    dashboard.write_dashboard(out, _DASHBOARD.value, title=_QUESTION.value)
    logging.warning("dashboard written to %s", _DASHBOARD.value)
  if not _TRACKS.value:
    out.pop("tracks", None)
  print(json.dumps(out, indent=2))  # the CLI's output


if __name__ == "__main__":
  app.run(main, flags_parser=command_line.parse_flags)
