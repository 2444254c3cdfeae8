"""MetricWriter: process-0 metrics as JSONL (always), TensorBoard event files (when tensorboardX is
installed) and Weights & Biases (when `config.logging.wandb_project` names a project). Evals and
checkpoints never depend on which backend is on; in other processes every call is a no-op.

  w = MetricWriter(logdir)                 # logdir/metrics.jsonl + logdir/events.out.tfevents.*
  w = MetricWriter(logdir, resume_step=s)  # a resumed run: rows after step s are written again
  w = MetricWriter(logdir, logging_cfg=config.logging, run_config=...)  # + W&B, the same scalars
  w.write_scalars(step, {"layer_03/l0": 41.2, ...})
  w.write_histogram(step, "layer_03/log10_density", values)
  w.close()
"""

import json
import logging
import math
import netrc
import os
import socket
import time
import uuid
from typing import Mapping

import jax
import numpy as np

from ghosttrack_jax.runtime import atomic_io


def _process_index() -> int:
  try:
    return jax.process_index()
  except Exception:  # pylint: disable=broad-except
    return 0


class MetricWriter:
  """Appends `{"step", "time", **scalars}` lines to `<logdir>/metrics.jsonl` and mirrors them to TB.

  A run that resumes from a checkpoint at step `resume_step` logs the steps after it again: those rows
  (and a last line a kill cut short) are removed from metrics.jsonl first, and TensorBoard purges its
  events after that step, so a kill never leaves a step twice. Rows for which `replaces(row)` is true are
  removed too (the final evaluation's rows, written once more after a kill before the stage's DONE).
  """

  def __init__(
    self,
    logdir: str,
    tensorboard: bool = True,
    enabled: bool | None = None,
    resume_step: int | None = None,
    replaces=None,
    logging_cfg=None,
    run_config: dict | None = None,
  ):
    self.logdir = logdir
    self.enabled = (_process_index() == 0) if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    self._wandb = None
    if not self.enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "metrics.jsonl")
    if resume_step is not None or replaces is not None:
      _drop_rows(
        path,
        lambda row: (resume_step is not None and row.get("step", 0) > resume_step)
        or (replaces is not None and replaces(row)),
      )
    self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      try:
        self._tb = _EventFile(logdir, purge_step=None if resume_step is None else resume_step + 1)
      except ImportError:  # optional: without tensorboardX the metrics still go to metrics.jsonl
        logging.info("tensorboardX not installed: metrics go to %s/metrics.jsonl only", logdir)
    if logging_cfg is not None and logging_cfg.wandb_project:
      self._wandb = _wandb_run(logging_cfg, logdir, run_config or {})

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {}
    for key, value in scalars.items():
      v = float(value)
      clean[key] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add(step, self._tb.summary.scalar(key, v))
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
    self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log({**{k: float(v) for k, v in scalars.items()}, STEP_KEY: int(step)})

  def write_histogram(self, step: int, tag: str, values) -> None:
    if not self.enabled or self._tb is None:
      return
    self._tb.add(step, self._tb.summary.histogram(tag, np.asarray(values), bins="auto"))

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
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _EventFile:
  """TensorBoard events written in the calling thread, with tensorboardX's encoders. (Its SummaryWriter
  writes from a thread of its own, which dies on a write error such as a full disk; every later add then
  blocks forever on its full queue, so a full disk would hang the training instead of stopping it.)"""

  def __init__(self, logdir: str, purge_step: int | None):
    from tensorboardX import summary  # noqa: PLC0415  (optional dependency)
    from tensorboardX.event_file_writer import EventsWriter  # noqa: PLC0415
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: PLC0415

    self.summary, self._event = summary, Event
    self._writer = EventsWriter(os.path.join(logdir, "events"))
    if purge_step is not None:  # TensorBoard hides the events of earlier runs from this step on
      self._writer.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

  def add(self, step: int, summary) -> None:
    self._writer.write_event(self._event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


# W&B's own step must only grow, but a resumed run logs steps again: scalars are plotted against this key.
STEP_KEY = "train_step"
RUN_ID_FILE = "wandb_run_id"  # in the log folder: a resumed training continues the same W&B run


def config_dict(config) -> dict:
  """The run's config as plain JSON values (W&B's run config)."""
  return json.loads(config.to_json_best_effort())


def wandb_mode(setting: str) -> str:
  """ "online" or "offline": `setting` unless it is "auto", then WANDB_MODE when set, else online only when
  an API key is configured and the W&B server answers (an offline run can be uploaded with `wandb sync`)."""
  if setting != "auto":
    return setting
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"]
  host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
  try:
    has_key = bool(os.environ.get("WANDB_API_KEY")) or netrc.netrc().authenticators(host) is not None
  except (OSError, netrc.NetrcParseError):
    has_key = False
  if not has_key:
    return "offline"
  try:
    socket.create_connection((host, 443), timeout=3).close()
  except OSError:
    return "offline"
  return "online"


def _wandb_run(cfg, logdir: str, run_config: dict):
  """The W&B run of this log folder (resumed when the folder has one), with `train_step` as x-axis."""
  import wandb  # noqa: PLC0415  (optional: imported only when a project is configured)

  id_path = os.path.join(logdir, RUN_ID_FILE)
  if os.path.exists(id_path):
    with open(id_path, encoding="utf-8") as f:
      run_id = f.read().strip()
  else:
    run_id = uuid.uuid4().hex[:16]
    atomic_io.atomic_write_text(id_path, run_id + "\n")
  mode = wandb_mode(cfg.wandb_mode)
  run = wandb.init(
    project=cfg.wandb_project,
    entity=cfg.wandb_entity or None,
    id=run_id,
    resume="allow",
    dir=logdir,
    mode=mode,
    config=run_config,
  )
  run.define_metric(STEP_KEY)
  run.define_metric("*", step_metric=STEP_KEY)
  logging.info("W&B run %s of project %s (%s)", run_id, cfg.wandb_project, mode)
  return run


def _drop_rows(path: str, drop) -> None:
  """Rewrites the metrics.jsonl at `path` (atomically) without the rows `drop` selects and without lines
  that do not parse (a write a kill cut short)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and not drop(row):
        kept.append(line if line.endswith("\n") else line + "\n")
  atomic_io.atomic_write_text(path, "".join(kept))


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
