"""MetricWriter: process-0 metrics as JSONL (always) and TensorBoard event files (when tensorboardX is
installed). Evals and checkpoints never depend on which backend is on; in other processes every call is
a no-op.

  w = MetricWriter(logdir)                 # logdir/metrics.jsonl + logdir/events.out.tfevents.*
  w.write_scalars(step, {"layer_03/l0": 41.2, ...})
  w.write_histogram(step, "layer_03/log10_density", values)
  w.close()
"""

import json
import logging
import math
import os
import time
from typing import Mapping

import jax
import numpy as np


def _process_index() -> int:
  try:
    return jax.process_index()
  except Exception:  # pylint: disable=broad-except
    return 0


class MetricWriter:
  """Appends `{"step", "time", **scalars}` lines to `<logdir>/metrics.jsonl` and mirrors them to TB."""

  def __init__(self, logdir: str, tensorboard: bool = True, enabled: bool | None = None):
    self.logdir = logdir
    self.enabled = (_process_index() == 0) if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        # Optional: without tensorboardX the metrics still go to metrics.jsonl.
        from tensorboardX import SummaryWriter  # noqa: PLC0415

        self._tb = SummaryWriter(logdir=logdir, flush_secs=30)
      except ImportError:
        logging.info("tensorboardX not installed: metrics go to %s/metrics.jsonl only", logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {}
    for key, value in scalars.items():
      v = float(value)
      clean[key] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(key, v, global_step=int(step))
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
    self._jsonl.flush()

  def write_histogram(self, step: int, tag: str, values) -> None:
    if not self.enabled or self._tb is None:
      return
    self._tb.add_histogram(tag, np.asarray(values), global_step=int(step))

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
