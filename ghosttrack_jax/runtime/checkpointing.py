"""Orbax checkpoints of the SAE trainer, resume by default, and the SIGTERM (preemption) protocol.

A checkpoint holds, per step, the layer-stacked train state as host numpy arrays with the REAL layers
only ([n_layers, ...]: independent of the device count and padding, so a run may resume on another
number of devices) and a JSON record: data position, root RNG key, config fingerprint, layers, and the
CRC-32 of every array. A restore checks them: Orbax restores a flipped byte in a data file silently as
a wrong value, so a damaged checkpoint is an error (DamagedStoreError naming the step and the fix),
never resumed from. `verify` checks a step without knowing its shapes.

Preemption: SLURM (and most schedulers) send SIGTERM before killing a job. `preemption_guard()` turns
SIGTERM into a flag; the training loop checks it after every step, saves a checkpoint, waits for the
write, and exits with status `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), distinct from success (0),
errors (1, 2) and an unhandled SIGTERM (143). Rerunning the same command resumes from that checkpoint.
"""

import contextlib
import logging
import os
import signal
import threading
import zlib
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from ghosttrack_jax.errors import DamagedStoreError

EXIT_PREEMPTED = 75  # os.EX_TEMPFAIL
CRC_KEY = "state_crc32"  # record field: {array key: CRC-32 of its bytes}


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is safely written; exits the process with status 75."""

  def __init__(self, step: int):
    super().__init__(EXIT_PREEMPTED)
    self.step = step


class Checkpointer:
  """A CheckpointManager over `directory` keeping the `max_to_keep` latest steps."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    """Saves host arrays `state` and JSON `record` (asynchronously; `wait()` to block).

    The tree is stored flat ({key path: array}), so any pytree (dataclasses, optax NamedTuples) comes
    back with its own type through `restore(step, like)`. The record gets every array's CRC-32.
    """
    flat = _flat(state)
    record = {**record, CRC_KEY: {k: _crc(a) for k, a in flat.items()}}
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(flat), record=ocp.args.JsonSave(record)),
      force=True,
    )

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _damaged(self, step: int, what: str) -> DamagedStoreError:
    others = [s for s in self.all_steps() if s != step]
    fallback = f"delete {self.step_dir(step)} to resume from step {max(others)}, or " if others else ""
    return DamagedStoreError(
      f"the checkpoint of step {step} in {self.directory} is damaged: {what}. It is not used: "
      f"{fallback}delete {self.directory} to train from the start."
    )

  def _check(self, step: int, state: dict, record: dict) -> None:
    want = record.get(CRC_KEY)
    if want is None:
      logging.warning(
        "checkpoint %s has no checksums (written before they were recorded)", self.step_dir(step)
      )
      return
    if sorted(want) != sorted(state):
      raise self._damaged(step, f"it holds arrays {sorted(state)}, its record lists {sorted(want)}")
    bad = [k for k in sorted(want) if _crc(state[k]) != int(want[k])]
    if bad:
      raise self._damaged(step, f"array(s) {bad} differ from their CRC-32 recorded at saving")

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores the state (structure, shapes and dtypes of `like`, as host numpy) and the record."""
    flat_like = _flat(like)
    abstract = {k: np.zeros(np.shape(a), np.asarray(a).dtype) for k, a in flat_like.items()}
    try:
      out = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()),
      )
    except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types for unreadable files)
      raise self._damaged(step, f"Orbax cannot read it ({type(e).__name__}: {str(e)[:300]})") from e
    state = {k: np.asarray(out.state[k]) for k in flat_like}
    self._check(step, state, dict(out.record))
    leaves = [state[k] for k in flat_like]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves), dict(out.record)

  def verify(self, step: int) -> list[str]:
    """Problems of one saved step (empty when it reads back with its recorded checksums)."""
    try:
      # Restore arguments for both items: without them Orbax logs four warnings per step.
      args = ocp.args.Composite(state=ocp.args.StandardRestore(), record=ocp.args.JsonRestore())
      out = self._manager.restore(step, args=args)
      state = {k: np.asarray(v) for k, v in dict(out.state).items()}
      self._check(step, state, dict(out.record))
    except DamagedStoreError as e:
      return [str(e)]
    except Exception as e:  # noqa: BLE001
      return [str(self._damaged(step, f"Orbax cannot read it ({type(e).__name__}: {str(e)[:300]})"))]
    return []

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _crc(a: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))


def _flat(tree: Any) -> dict:
  """{"params/W_enc": array, ...} in the tree's leaf order."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[key] = np.asarray(leaf)
  return out


class PreemptionFlag:
  """Set by the signal handler; read by the training loop between steps."""

  def __init__(self):
    self.requested = False
    self.signum: int | None = None

  def __bool__(self) -> bool:
    return self.requested


@contextlib.contextmanager
def preemption_guard(signals=(signal.SIGTERM,)) -> Iterator[PreemptionFlag]:
  """Within the block, SIGTERM sets the yielded flag instead of killing the process.

  Outside the main thread (where handlers cannot be installed) the flag simply never fires.
  """
  flag = PreemptionFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = {s: signal.getsignal(s) for s in signals}

  def handler(signum, frame):
    del frame
    flag.requested, flag.signum = True, signum
    logging.warning(
      "received signal %d: saving a checkpoint after this step, then exiting with status %d",
      signum,
      EXIT_PREEMPTED,
    )

  for s in signals:
    signal.signal(s, handler)
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
