"""`main --verify`: checks every finished output of a run against the checksums its stage recorded, and
runs nothing.

  python -m ghosttrack_jax.main --config=configs/smollm2_135m.py --workdir=runs/smollm2_135m --verify

Each artifact's owner module knows its files and verifies them (`verify(out_dir)`, raising
DamagedOutputError naming the file and the fix); this module only finds the folders and collects the
results. Beside the stages' DONE records it checks the activation store (against every field the config
determines, then every chunk's size and CRC-32 and every token chunk file), every Orbax checkpoint of the
SAE trainer (each array against the CRC-32 recorded at saving) and the SAE export (its recorded SHA-256). A folder without its DONE marker is reported as incomplete (the stage resumes it on the next
run), not as damaged, and a store made for another configuration as a mismatch (use another --workdir),
not as damaged. A file that cannot be read at all (say a non-UTF-8 meta.json) is a damaged finding naming
it, never a traceback. To check another artifact, add a function `(config, workdir) -> list[Finding]` to
`CHECKS`.
"""

import dataclasses
import os

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import detector, oof
from ghosttrack_jax.errors import GhostTrackError
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.extract import stage as extract_stage
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, checkpointing, paths
from ghosttrack_jax.track import feature_table
from ghosttrack_jax.train import stage as train_stage

OK, INCOMPLETE, DAMAGED, MISMATCH = "ok", "incomplete", "damaged", "mismatch"


@dataclasses.dataclass(frozen=True)
class Finding:
  """The state of one output folder."""

  artifact: str  # "answers", "features", "detection", "detector", "evaluation", ...
  path: str
  status: str  # OK, INCOMPLETE (no DONE yet: resumed by the next run), DAMAGED or MISMATCH (other config)
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


def check_store(config, workdir: str) -> list[Finding]:
  """The activation store: made for this config, and every chunk and token file as recorded."""
  path = paths.for_config(config, workdir).hidden_states
  if not os.path.exists(os.path.join(path, store_lib.META)):
    return []
  want, _ = extract_stage.expected_identity(config)
  problems = extract_stage.identity_problems(atomic_io.read_json(os.path.join(path, store_lib.META)), want)
  if problems:
    return [
      Finding(
        "store",
        path,
        MISMATCH,
        f"made for another configuration ({'; '.join(problems)}): use another --workdir, or delete it "
        "to extract again",
      )
    ]
  if not os.path.exists(os.path.join(path, store_lib.COMPLETE)):
    return [Finding("store", path, INCOMPLETE, "no COMPLETE marker: the next run of extract resumes it")]
  problems = store_lib.verify_store(path)
  if problems:
    return [Finding("store", path, DAMAGED, p) for p in problems]
  return [Finding("store", path, OK)]


def check_checkpoints(config, workdir: str) -> list[Finding]:
  """Every kept Orbax checkpoint of the SAE trainer, each array against its recorded CRC-32."""
  directory = os.path.join(paths.for_config(config, workdir).checkpoints, "train_state")
  if not os.path.isdir(directory):
    return []
  ckpt = checkpointing.Checkpointer(directory)
  try:
    out = []
    for step in ckpt.all_steps():
      problems = ckpt.verify(step)
      out.append(Finding("checkpoint", ckpt.step_dir(step), DAMAGED if problems else OK, " ".join(problems)))
    return out
  finally:
    ckpt.close()


def check_export(config, workdir: str) -> list[Finding]:
  """The SAELens export against the SHA-256 its DONE marker recorded."""
  export_dir = paths.for_config(config, workdir).sae_export
  if not os.path.isdir(export_dir):
    return []
  if not atomic_io.is_done(export_dir):
    return [Finding("sae export", export_dir, INCOMPLETE, "no DONE marker: the next train run writes it")]
  info = atomic_io.read_json(os.path.join(export_dir, atomic_io.DONE))
  try:
    digest = train_stage.manifest_hash(export_dir, info["layers"])
  except OSError as e:
    digest = f"unreadable ({e})"
  if digest != info.get("sha256"):
    results = paths.for_config(config, workdir).sae_results
    return [
      Finding(
        "sae export",
        export_dir,
        DAMAGED,
        f"its files' SHA-256 is {digest}, its DONE marker recorded {info.get('sha256')}: delete "
        f"{export_dir} and {results} and run the train stage again (it re-exports from the last checkpoint)",
      )
    ]
  return [Finding("sae export", export_dir, OK)]


# Every check `verify_all` runs, in pipeline order of the artifacts.
CHECKS = [check_store, check_checkpoints, check_export, check_results]


def _safely(check, config, workdir: str) -> list[Finding]:
  """A check's findings; a file it cannot read (a damaged record) is a DAMAGED finding naming it."""
  try:
    return check(config, workdir)
  except GhostTrackError as e:
    return [Finding(check.__name__.removeprefix("check_"), workdir, DAMAGED, f"{type(e).__name__}: {e}")]


def verify_all(config, workdir: str) -> list[Finding]:
  """Every output folder of the run in `workdir` for `config`'s model, checked; nothing is run."""
  return [f for check in CHECKS for f in _safely(check, config, workdir)]


def failed(findings: list[Finding]) -> bool:
  """True when a finding is damaged or made for another config (the command's exit status 2)."""
  return any(f.status in (DAMAGED, MISMATCH) for f in findings)


def format_findings(findings: list[Finding]) -> str:
  if not findings:
    return "no finished outputs found"
  lines = [
    f"{f.status:<10} {f.artifact:<11} {f.path}" + (f"\n           {f.message}" if f.message else "")
    for f in findings
  ]
  n_bad = sum(f.status == DAMAGED for f in findings)
  n_other = sum(f.status == MISMATCH for f in findings)
  lines.append(
    f"{len(findings)} folder(s) checked, {n_bad} damaged"
    + (f", {n_other} made for another config" if n_other else "")
  )
  return "\n".join(lines)
