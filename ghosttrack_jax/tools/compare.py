"""The comparison across models over finished runs: one command, any number of workdirs.

  python -m ghosttrack_jax.tools.compare --workdirs=runs/smollm2_135m,runs/gemma3_270m --out=runs/compare

Writes compare.{json,md,html} into --out (report.compare: the models and their answers, SAE quality and
tracker association per relative depth, the detection tables side by side, plots). Every finished
evaluation under the workdirs is included; a workdir with none is an error. Nothing under the workdirs
is written.
"""

import logging
import os
import sys

from absl import app, flags

from ghosttrack_jax.errors import ConfigError, GhostTrackError
from ghosttrack_jax.report import compare
from ghosttrack_jax.runtime import atomic_io

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Finished pipeline workdirs, comma-separated.")
_OUT = flags.DEFINE_string("out", None, "Folder for compare.{json,md,html} (created).")
flags.mark_flags_as_required(["workdirs", "out"])


def write(workdirs, out: str) -> str:
  """Writes the comparison of `workdirs` into `out`; returns the HTML path."""
  empty = [w for w in workdirs if not compare.gather([w])["models"]]
  if empty:
    raise ConfigError(f"no finished evaluation under {empty}: run the pipeline there first (or drop it)")
  comparison = compare.gather(workdirs)
  os.makedirs(out, exist_ok=True)
  atomic_io.atomic_write_json(os.path.join(out, "compare.json"), compare.summary(comparison))
  atomic_io.atomic_write_text(os.path.join(out, "compare.md"), compare.to_markdown(comparison, level="#"))
  path = os.path.join(out, "compare.html")
  atomic_io.atomic_write_text(path, compare.page(comparison, compare.plots(comparison)))
  return path


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    path = write(_WORKDIRS.value, _OUT.value)
  except GhostTrackError as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(2)
  logging.info("comparison written to %s (also compare.md and compare.json)", path)


if __name__ == "__main__":
  app.run(main)
