"""MetricWriter: a resumed run never leaves a step twice in metrics.jsonl (nor a line a kill cut short)."""

import errno
import json
import os

import disk_full
import numpy as np
import pytest

from ghosttrack_jax import config_lib
from ghosttrack_jax.runtime import writer


def _steps(logdir):
  return [r["step"] for r in writer.read_jsonl(os.path.join(logdir, "metrics.jsonl"))]


def test_resume_removes_the_rows_it_writes_again(tmp_path):
  d = str(tmp_path)
  with writer.MetricWriter(d, tensorboard=False, enabled=True) as w:
    for step in (1, 5, 10, 15):
      w.write_scalars(step, {"loss": step})
  with open(os.path.join(d, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write('{"step": 20, "lo')  # killed mid-line
  with writer.MetricWriter(d, tensorboard=False, enabled=True, resume_step=10) as w:  # checkpoint at 10
    for step in (11, 15, 20):
      w.write_scalars(step, {"loss": step})
  assert _steps(d) == [1, 5, 10, 11, 15, 20]


def test_replaced_rows_are_written_once(tmp_path):
  d = str(tmp_path)
  is_eval = lambda row: any(k.startswith("eval/") for k in row)
  for _ in range(2):  # the final evaluation, written again after a kill before the stage finished
    with writer.MetricWriter(d, tensorboard=False, enabled=True, replaces=is_eval) as w:
      w.write_scalars(28, {"eval/layer_00/fvu": 0.1})
  with open(os.path.join(d, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 1 and rows[0]["eval/layer_00/fvu"] == 0.1


def test_weights_and_biases_gets_the_scalars_of_the_jsonl_log(tmp_path, monkeypatch):
  """With config.logging.wandb_project set (here offline, as without network), W&B receives every scalar
  of metrics.jsonl, against the training step, and a resumed training continues the same W&B run."""
  pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'ghosttrack_jax[wandb]'")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  cfg = config_lib.base_config().logging
  cfg.wandb_project = "ghosttrack-test"
  d = str(tmp_path)
  ids = []
  for steps in ((1, 5), (10,)):  # the second writer: a resumed run
    w = writer.MetricWriter(
      d, tensorboard=False, enabled=True, logging_cfg=cfg, run_config={"sae": {"width": 8}}
    )
    for step in steps:
      w.write_scalars(step, {"layer_00/loss": 1.0 / step, "layer_00/l0": 10 + step})
    last = writer.read_jsonl(os.path.join(d, "metrics.jsonl"))[-1]
    summary = dict(w._wandb.summary)  # what W&B holds for the run: the last value of each key
    assert {k: summary[k] for k in last if k not in ("step", "time")} == {
      k: v for k, v in last.items() if k not in ("step", "time")
    }
    assert summary[writer.STEP_KEY] == last["step"] and w._wandb.config["sae"] == {"width": 8}
    ids.append(w._wandb.id)
    w.close()
  assert ids[0] == ids[1]


@pytest.mark.timeout(60)
def test_a_full_disk_stops_tensorboard_logging_with_an_error_not_a_hang(tmp_path):
  """tensorboardX's own writer thread dies on ENOSPC and every later event then blocks forever: events
  are written in the caller's thread, so the write error reaches the training (one line from main)."""
  with disk_full.small_filesystem(tmp_path, mib=8) as mnt:
    if mnt is None:
      pytest.skip("mounting a tmpfs is not permitted here")
    w = writer.MetricWriter(os.path.join(mnt, "log"), enabled=True)
    disk_full.fill(mnt, leave=0)
    with pytest.raises(OSError) as e:
      for step in range(1000):
        w.write_histogram(step, "layer_00/log10_density", np.random.default_rng(step).normal(size=4096))
    assert e.value.errno == errno.ENOSPC
