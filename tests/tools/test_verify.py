"""A damaged or truncated answers / feature / detection / evaluation file is an error naming the file and
the fix, never silently reused: through its owner's load, through `verify_all`, through `main --verify`,
and through a rerun of the pipeline. On a copy of the session's finished tiny run."""

import os
import shutil
import subprocess
import sys

import pytest
import tiny_pipeline

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import detector, oof
from ghosttrack_jax.errors import DamagedOutputError, IncompleteStoreError
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.tools import verify
from ghosttrack_jax.track import feature_table


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
  """(config, workdir): a private copy of the finished tiny run (the tests damage and restore files)."""
  config, workdir = tiny_run
  copy = str(tmp_path_factory.mktemp("verify") / "run")
  shutil.copytree(workdir, copy, symlinks=True)
  return config, copy


def _dirs(config, workdir):
  p, ds = paths.for_config(config, workdir), config.qa.dataset
  det = oof.directory(config, workdir, ds)
  return {
    "answers": p.answers(ds),
    "features": feature_table.directory(config, workdir, ds),
    "detection": det,
    "detector": detector.directory(det),
    "evaluation": evaluate_stage.directory(config, workdir, ds),
  }


# (folder, file, the owner's load of it). Each load must refuse the damaged file.
LOADS = [
  ("answers", "examples.jsonl", lambda c, w, d: examples_lib.load_examples(c, w)),
  ("answers", "folds.npz", lambda c, w, d: examples_lib.load_folds(c, w)),
  ("answers", "manifest.json", lambda c, w, d: examples_lib.load_manifest(c, w)),
  ("answers", "audit_sample.jsonl", lambda c, w, d: examples_lib.verify(d)),
  ("features", "features.npz", lambda c, w, d: feature_table.load_features(d)),
  ("features", "features.json", lambda c, w, d: feature_table.load_meta(d)),
  ("features", "summaries.npz", lambda c, w, d: feature_table.load_summaries(d)),
  ("features", "tracks.npz", lambda c, w, d: feature_table.load_tracks(d)),
  ("features", "degeneracy.json", lambda c, w, d: feature_table.verify(d)),
  ("detection", "scores.npz", lambda c, w, d: oof.load_scores(d)),
  ("detection", "methods.json", lambda c, w, d: oof.load_methods(d)),
  ("detection", "label_variants.npz", lambda c, w, d: oof.load_label_variants(d)),
  ("detection", "predictions.csv", lambda c, w, d: oof.verify(d)),
  ("detector", "manifest.json", lambda c, w, d: detector.Detector.load(d)),
  ("detector", "logistic.json", lambda c, w, d: detector.Detector.load(d)),
  ("detector", "random_forest.joblib", lambda c, w, d: detector.Detector.load(d, "random_forest")),
  ("evaluation", "metrics.json", lambda c, w, d: evaluate_stage.load_metrics(d)),
]


class _Damaged:
  """Truncates (or flips one byte of) a file; restores it on exit."""

  def __init__(self, path, how="truncate"):
    self.path, self.how = path, how

  def __enter__(self):
    with open(self.path, "rb") as f:
      self.saved = f.read()
    if self.how == "truncate":
      data = self.saved[: len(self.saved) // 2]
    else:  # same size, one byte changed
      mid = len(self.saved) // 2
      data = self.saved[:mid] + bytes([self.saved[mid] ^ 0x20]) + self.saved[mid + 1 :]
    with open(self.path, "wb") as f:
      f.write(data)
    return self

  def __exit__(self, *exc):
    with open(self.path, "wb") as f:
      f.write(self.saved)


def test_every_output_folder_records_its_files(run_copy):
  """The DONE record of each folder lists every file its owner loads."""
  config, workdir = run_copy
  dirs = _dirs(config, workdir)
  for folder, name, _ in LOADS:
    assert name in atomic_io.recorded_files(dirs[folder], "fix"), (folder, name)
  findings = verify.verify_all(config, workdir)
  # the later stages' folders, and the store, checkpoints and SAE export (tests/tools/test_verify_store.py)
  assert {f.artifact for f in findings} == set(dirs) | {"store", "checkpoint", "sae export"}
  assert all(f.status == verify.OK for f in findings), [f for f in findings if f.status != verify.OK]


@pytest.mark.parametrize("folder,name,load", LOADS, ids=[f"{f}/{n}" for f, n, _ in LOADS])
def test_a_damaged_file_is_refused_by_its_load(run_copy, folder, name, load):
  config, workdir = run_copy
  d = _dirs(config, workdir)[folder]
  load(config, workdir, d)  # intact: loads
  for how in ("truncate", "flip"):
    with _Damaged(os.path.join(d, name), how):
      with pytest.raises(DamagedOutputError) as e:
        load(config, workdir, d)
      msg = str(e.value)
      assert os.path.join(d, name) in msg and "is damaged" in msg and "rerun the" in msg, msg
      bad = [f for f in verify.verify_all(config, workdir) if f.status == verify.DAMAGED]
      assert [f.path for f in bad] == [d] and name in bad[0].message


def test_a_missing_file_and_an_unreadable_done_are_errors(run_copy):
  config, workdir = run_copy
  d = _dirs(config, workdir)["features"]
  path = os.path.join(d, "tracks.npz")
  os.rename(path, path + ".moved")
  try:
    with pytest.raises(DamagedOutputError, match="tracks.npz is missing"):
      feature_table.load_tracks(d)
  finally:
    os.rename(path + ".moved", path)
  with _Damaged(os.path.join(d, atomic_io.DONE)):
    with pytest.raises(DamagedOutputError, match="DONE cannot be read"):
      feature_table.load_meta(d)


def test_a_folder_without_done_is_incomplete_not_damaged(run_copy):
  config, workdir = run_copy
  d = _dirs(config, workdir)["evaluation"]
  done = os.path.join(d, atomic_io.DONE)
  os.rename(done, done + ".moved")
  try:
    with pytest.raises(IncompleteStoreError):
      evaluate_stage.load_metrics(d)
    (f,) = [f for f in verify.verify_all(config, workdir) if f.artifact == "evaluation"]
    assert f.status == verify.INCOMPLETE
  finally:
    os.rename(done + ".moved", done)


def _cli(workdir, *flags):
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={tiny_pipeline.CONFIG}",
    f"--workdir={workdir}",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    cmd + list(flags),
    cwd=tiny_pipeline.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def test_cli_verify_and_a_rerun_name_the_damaged_file(run_copy):
  """`main --verify` reports it and exits 2; a plain rerun (every stage DONE) stops at the first stage that
  reads the file, naming it and the fix, instead of reusing it."""
  config, workdir = run_copy
  proc = _cli(workdir, "--verify")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 damaged" in proc.stdout
  path = os.path.join(_dirs(config, workdir)["evaluation"], "metrics.json")
  with _Damaged(path):
    proc = _cli(workdir, "--verify")
    assert proc.returncode == 2 and f"{path} is damaged" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "1 damaged" in proc.stdout
    proc = _cli(workdir, "--stages=evaluate,report")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
      f"DamagedOutputError: {path} is damaged" in proc.stderr and "rerun the 'evaluate' stage" in proc.stderr
    )
