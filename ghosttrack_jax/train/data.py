"""Training batches for the layer-stacked SAE trainer, read from the activation store.

Order (fully determined by the seed, so a step number IS the data position):
  - the training rows [0, n_train_rows) are cut into windows of `window_rows` contiguous rows (the
    store's chunk size, so each read is a few whole chunks; random row gathers are ~30x slower);
  - each epoch permutes the windows (rng(seed, epoch)), optionally caps the rows per epoch, and groups
    them into buffers of `shuffle_windows` windows;
  - each buffer is read into RAM, its rows permuted (rng(seed, epoch, buffer)) and cut into batches of
    `batch_size` rows; the remainder (< batch_size rows) is dropped.
Each device's block reads only the layers it trains (`LayerLayout.device_sources`). Memory is bounded by
one buffer (shuffle_windows * window_rows rows of the local layers, storage dtype) plus `prefetch`
batches, whatever the store size. A background thread reads ahead; `position(step)` gives the
(epoch, buffer, batch) a checkpoint records.
"""

import dataclasses
import queue
import threading
from typing import Iterator, Protocol, Sequence

import numpy as np


class RowReader(Protocol):
  """What the trainer needs from the activation store (extract.store.ActivationStore has it)."""

  def read(self, layer_indices, start: int, stop: int) -> np.ndarray:
    """[n_layers_selected, stop - start, d_model] rows of the given layer positions."""


@dataclasses.dataclass(frozen=True)
class BufferPlan:
  epoch: int
  index: int  # buffer index within the epoch
  windows: tuple  # ((start, stop), ...) row ranges
  n_batches: int
  first_step: int  # global step of this buffer's first batch


@dataclasses.dataclass(frozen=True)
class DataPlan:
  """The deterministic order of training rows."""

  n_train_rows: int
  batch_size: int  # rows per step
  window_rows: int  # contiguous rows per read
  shuffle_windows: int  # windows per shuffle buffer
  epochs: int
  rows_per_epoch: int = 0  # cap per epoch; 0 = all training rows
  seed: int = 0

  def __post_init__(self):
    if self.n_train_rows < self.batch_size:
      raise ValueError(f"{self.n_train_rows} training rows cannot fill one batch of {self.batch_size}")

  def _windows(self) -> list[tuple[int, int]]:
    starts = range(0, self.n_train_rows, self.window_rows)
    return [(s, min(s + self.window_rows, self.n_train_rows)) for s in starts]

  def epoch_buffers(self, epoch: int) -> list[tuple[tuple[int, int], ...]]:
    windows = self._windows()
    order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(windows))
    chosen, total = [], 0
    for i in order:
      start, stop = windows[i]
      if self.rows_per_epoch and total + (stop - start) > self.rows_per_epoch:
        stop = start + (self.rows_per_epoch - total)
      if stop > start:
        chosen.append((start, stop))
        total += stop - start
      if self.rows_per_epoch and total >= self.rows_per_epoch:
        break
    k = self.shuffle_windows
    return [tuple(chosen[i : i + k]) for i in range(0, len(chosen), k)]

  def schedule(self) -> list[BufferPlan]:
    plans, step = [], 0
    for epoch in range(self.epochs):
      for index, windows in enumerate(self.epoch_buffers(epoch)):
        n_batches = sum(b - a for a, b in windows) // self.batch_size
        plans.append(BufferPlan(epoch, index, windows, n_batches, step))
        step += n_batches
    return plans

  @property
  def total_steps(self) -> int:
    return sum(p.n_batches for p in self.schedule())

  @property
  def steps_per_epoch(self) -> int:
    return max(1, self.total_steps // self.epochs)

  def position(self, step: int) -> dict:
    """The data position of global `step` (what the checkpoint records)."""
    for p in self.schedule():
      if p.first_step <= step < p.first_step + p.n_batches:
        return {"step": step, "epoch": p.epoch, "buffer": p.index, "batch": step - p.first_step}
    return {"step": step, "epoch": self.epochs, "buffer": 0, "batch": 0}

  def row_permutation(self, plan: BufferPlan) -> np.ndarray:
    n = sum(b - a for a, b in plan.windows)
    return np.random.default_rng([self.seed, 2, plan.epoch, plan.index]).permutation(n)


def read_block(reader: RowReader, sources: Sequence[int], windows) -> np.ndarray:
  """[len(sources), rows, D]: the rows of `windows` for layer positions `sources` (repeats allowed)."""
  unique = sorted(set(sources))
  parts = [reader.read(unique, a, b) for a, b in windows]
  block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
  if list(sources) != unique:
    block = block[[unique.index(s) for s in sources]]
  return block


def iterate_batches(
  plan: DataPlan, reader: RowReader, device_sources: Sequence[Sequence[int]], start_step: int = 0
) -> Iterator[tuple[int, list[np.ndarray]]]:
  """Yields (step, [per-device block [l_d, batch_size, D]]) from `start_step` on (no thread)."""
  for buf in plan.schedule():
    if buf.first_step + buf.n_batches <= start_step or buf.n_batches == 0:
      continue
    blocks = [read_block(reader, src, buf.windows) for src in device_sources]
    perm = plan.row_permutation(buf)
    first = max(0, start_step - buf.first_step)
    for i in range(first, buf.n_batches):
      idx = np.sort(perm[i * plan.batch_size : (i + 1) * plan.batch_size])
      # Rows are sorted within the batch (a batch is a set; sorting makes the gather sequential).
      yield buf.first_step + i, [blk[:, idx] for blk in blocks]
    del blocks


class Prefetcher:
  """Runs `iterate_batches` in a background thread, `depth` batches ahead."""

  _END = object()

  def __init__(self, plan: DataPlan, reader: RowReader, device_sources, start_step: int = 0, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=self._run, args=(plan, reader, device_sources, start_step), daemon=True, name="sae-data-prefetch"
    )
    self._thread.start()

  def _run(self, plan, reader, device_sources, start_step):
    try:
      for item in iterate_batches(plan, reader, device_sources, start_step):
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(self._END)
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put(e)

  def __iter__(self):
    while True:
      item = self._queue.get()
      if item is self._END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self):
    self._stop.set()
    while True:  # unblock a producer waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)
