"""`main --verify` on a real tiny run: a clean workdir passes; a truncated store chunk, a damaged SAE
checkpoint and a changed SAE export file are each reported with the file and the fix (status 2), and
nothing is run."""

import os
import shutil
import subprocess
import sys

import tiny_pipeline  # tests/ is on sys.path under pytest

from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import paths
from ghosttrack_jax.sae import export


def _verify(workdir):
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "ghosttrack_jax.main",
      f"--config={tiny_pipeline.CONFIG}",
      f"--workdir={workdir}",
      "--verify",
    ],
    cwd=tiny_pipeline.REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  return p.returncode, p.stdout


def test_verify_a_clean_and_a_damaged_workdir(tiny_run, tmp_path):
  config, reference = tiny_run
  work = str(tmp_path / "work")
  shutil.copytree(reference, work)
  code, out = _verify(work)
  assert code == 0, out
  assert "0 damaged" in out
  for artifact in ("store", "checkpoint", "sae export"):
    assert any(line.startswith("ok") and f" {artifact} " in line for line in out.splitlines()), out

  mp = paths.for_config(config, work)
  with open(store_lib.chunk_file(os.path.join(mp.hidden_states, "activations"), 0, 1, 0), "r+b") as f:
    f.truncate(64)
  ckpt_dir = os.path.join(mp.checkpoints, "train_state")
  last = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt_dir, str(last))) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x01]))
  with open(os.path.join(export.layer_dir(mp.sae_export, 1), export.CFG), "a", encoding="utf-8") as f:
    f.write(" ")
  before = sorted(os.listdir(mp.results))
  code, out = _verify(work)
  assert code == 2, out
  assert "3 damaged" in out, out
  assert "chunk 1 of layer position 0" in out and "has 64 bytes" in out
  assert f"the checkpoint of step {last}" in out and "is damaged" in out
  assert f"delete {os.path.join(ckpt_dir, str(last))} to resume from step" in out
  assert "run the train stage again" in out
  assert sorted(os.listdir(mp.results)) == before  # nothing ran
