"""Every benchmark runs on a tiny shape through its command line (no timing is asserted: the figures belong
in benchmarks/RESULTS.md), so a refactor cannot silently break one; a new benchmark must add its case."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules of benchmarks/ that are not benchmarks.
HELPERS = {"__init__", "harness"}


def _cases(tmp: str, default_run: str, qa_file: str) -> dict:
  """Tiny-shape arguments of each benchmark; `default_run`: a finished configs/tiny.py:default workdir
  of the QA file `qa_file` (tiny_pipeline.get_default)."""
  run = ["--config", "configs/tiny.py:default", "--workdir", default_run]
  run += ["--set", f"qa.wikidata_file={qa_file!r}", "--set", "qa.exclude_non_answers=False"]
  return {
    "extract": ["--models", "tiny", "--no-reference", "--batch", "2", "--seq", "16", "--batches", "2"],
    "input_pipeline": [
      *("--store", os.path.join(tmp, "store"), "--chunks", "2", "--layers", "2", "--d-model", "16"),
      *("--chunk-rows", "128", "--batch", "64", "--shuffle-windows", "2"),
    ],
    "sae_train": [
      *("--d", "16", "--width", "64", "--batch", "64", "--k", "4", "--l0", "4", "--steps", "1"),
      "--no-reference",
    ],
    "tracking": [
      *("--texts", "4", "--layers", "3", "--width", "64", "--d-model", "16", "--top-k", "5"),
      *("--concepts", "4", "--batch", "2", "--repeats", "2"),
    ],
    "train_loop": [
      *("--config", "configs/tiny.py:default", "--synthetic", "--steps", "4", "--profile", "--repeats", "1"),
    ],
    # on a finished run every stage skips itself: the bounds are computed from its outputs
    "pipeline": run,
    "sae_quality": [
      *run,
      "--layers",
      "0,1",
      "--k",
      "8,8",
      "--variants",
      "ours_topk",
      "--tanh-coefficients",
      "0.5,0.5",
    ],
  }


def _benchmarks() -> list[str]:
  names = [f[:-3] for f in os.listdir(os.path.join(REPO, "benchmarks")) if f.endswith(".py")]
  return sorted(n for n in names if n not in HELPERS)


def test_every_benchmark_has_a_smoke_case():
  assert sorted(_cases("", "", "")) == _benchmarks()


@pytest.mark.parametrize("name", _benchmarks())
def test_benchmark_runs_on_a_tiny_shape(name, tmp_path, tiny_default_run):
  _, workdir, qa_file = tiny_default_run
  args = _cases(str(tmp_path), workdir, qa_file)[name]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "GHOSTTRACK_PROGRESS": "off"}
  proc = subprocess.run(
    [sys.executable, "-m", f"benchmarks.{name}", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert proc.stdout.strip(), "a benchmark prints its figures"
