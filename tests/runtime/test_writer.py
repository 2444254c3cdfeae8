"""MetricWriter: a resumed run never leaves a step twice in metrics.jsonl (nor a line a kill cut short)."""

import json
import os

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
