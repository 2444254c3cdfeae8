"""scripts/gpu_check.sh --smoke on CPU: the GPU check runs end to end and records every figure it
promises (step time, rows/s, the input-wait fraction, the plan's estimate, XLA memory per step), so it
is ready for the first GPU machine. It has not run on a GPU yet."""

import json
import os
import subprocess

import tiny_pipeline  # tests/ is on sys.path under pytest


def test_gpu_check_smoke_records_every_figure(tmp_path):
  out = str(tmp_path / "out")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  p = subprocess.run(
    ["bash", os.path.join(tiny_pipeline.REPO, "scripts", "gpu_check.sh"), "--smoke", "--out", out],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  with open(os.path.join(out, "gpu_check.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert not [r for r in records if "error" in r], [r for r in records if "error" in r]
  runs = {r["case"]: r for r in records if r["section"] == "runs" and "case" in r}
  assert set(runs) == {"tiny", "gpt2_small_shaped"}
  for r in runs.values():
    assert r["train_steps"] > 0 and r["step_ms"] > 0 and r["rows_per_s_per_layer"] > 0
    assert 0 <= r["device_input_wait_fraction"] <= 1
    assert r["plan_train"] and r["plan_train_peak"] and r["extract_tokens_per_s"] > 0
  steps = [r for r in records if r["section"] == "steps" and "case" in r]
  assert len(steps) == 5 and all(r["xla_bytes"] > 0 and r["ms_per_step"] > 0 for r in steps)
  no_gpu = subprocess.run(
    ["bash", os.path.join(tiny_pipeline.REPO, "scripts", "gpu_check.sh"), "--out", out],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert no_gpu.returncode == 3 and "no GPU" in no_gpu.stderr
