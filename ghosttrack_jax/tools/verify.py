"""`main --verify`: checks every finished output of a run against the checksums its stage recorded, and
runs nothing.

  python -m ghosttrack_jax.main --config=configs/smollm2_135m.py --workdir=runs/smollm2_135m --verify

Each artifact's owner module knows its files and verifies them (`verify(out_dir)`, raising
DamagedOutputError naming the file and the fix); this module only finds the folders and collects the
results. A folder without its DONE marker is reported as incomplete (the stage resumes it on the next
run), not as damaged. To check another artifact, add a function `(config, workdir) -> list[Finding]` to
`CHECKS`.
"""

import dataclasses
import os

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import detector, oof
from ghosttrack_jax.errors import GhostTrackError
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import feature_table

OK, INCOMPLETE, DAMAGED = "ok", "incomplete", "damaged"


@dataclasses.dataclass(frozen=True)
class Finding:
  """The state of one output folder."""

  artifact: str  # "answers", "features", "detection", "detector", "evaluation", ...
  path: str
  status: str  # OK, INCOMPLETE (no DONE yet: resumed by the next run) or DAMAGED
  message: str = ""  # for DAMAGED: the error, naming the file and the fix


def _datasets(parent: str) -> list[str]:
  return (
    sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d)))
    if os.path.isdir(parent)
    else []
  )


def _check(artifact: str, path: str, verify_fn) -> Finding:
  if not atomic_io.is_done(path):
    return Finding(artifact, path, INCOMPLETE, "no DONE marker: the next run of its stage resumes it")
  try:
    verify_fn(path)
  except GhostTrackError as e:
    return Finding(artifact, path, DAMAGED, f"{type(e).__name__}: {e}")
  return Finding(artifact, path, OK)


def check_results(config, workdir: str) -> list[Finding]:
  """The answers, feature tables, out-of-fold scores, detectors and metrics of every dataset."""
  p = paths.for_config(config, workdir)
  out = []
  for ds in _datasets(os.path.join(p.cache, "answers")):
    out.append(_check("answers", p.answers(ds), examples_lib.verify))
  for ds in _datasets(p.tracking):
    out.append(_check("features", os.path.join(p.tracking, ds), feature_table.verify))
  for ds in _datasets(p.detection):
    d = os.path.join(p.detection, ds)
    out.append(_check("detection", d, oof.verify))
    if os.path.isdir(detector.directory(d)) and atomic_io.is_done(d):
      out.append(_check("detector", detector.directory(d), detector.verify))
  for ds in _datasets(p.evaluation):
    if ds != "dashboards":
      out.append(_check("evaluation", os.path.join(p.evaluation, ds), evaluate_stage.verify))
  return out


# Every check `verify_all` runs, in pipeline order of the artifacts.
CHECKS = [check_results]


def verify_all(config, workdir: str) -> list[Finding]:
  """Every output folder of the run in `workdir` for `config`'s model, checked; nothing is run."""
  return [f for check in CHECKS for f in check(config, workdir)]


def format_findings(findings: list[Finding]) -> str:
  if not findings:
    return "no finished outputs found"
  lines = [
    f"{f.status:<10} {f.artifact:<11} {f.path}" + (f"\n           {f.message}" if f.message else "")
    for f in findings
  ]
  n_bad = sum(f.status == DAMAGED for f in findings)
  lines.append(f"{len(findings)} folder(s) checked, {n_bad} damaged")
  return "\n".join(lines)
