"""Training batches for the layer-stacked SAE trainer, read from the activation store.

Order (fully determined by the seed, so a step number IS the data position):
  - the training rows [0, n_train_rows) are cut into windows of `window_rows` contiguous rows (the
    store's chunk size, so each read is a few whole chunks; random row gathers are ~30x slower);
  - each epoch permutes the windows (rng(seed, epoch)), optionally caps the rows per epoch, and groups
    them into buffers of `shuffle_windows` windows;
  - each buffer is read into RAM, its rows permuted (rng(seed, epoch, buffer)) and cut into batches of
    `batch_size` rows; the remainder (< batch_size rows) is dropped.
Each device's block reads only the layers it trains (`LayerLayout.device_sources`). `iterate_batches`
is the plain definition of the order; `Pipeline` delivers the same batches with threads reading ahead
into preallocated buffers and puts them on the devices. Memory is bounded by two buffers
(shuffle_windows * window_rows rows of the local layers, storage dtype) plus a few batches, whatever the
store size. `position(step)` gives the (epoch, buffer, batch) a checkpoint records.
"""

import dataclasses
import mmap
import queue
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np


class RowReader(Protocol):
  """What the trainer needs from the activation store (extract.store.ActivationStore has it). A reader
  may also have `read_into(position, start, stop, out)`, which fills `out` [stop - start, d_model] with
  one layer position's rows (the pipeline then reads without allocating)."""

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


class Batch(NamedTuple):
  """One step's input as the pipeline delivers it."""

  step: int
  host: list  # per local device, [per_device, batch_size, D]: views into a ring slot (valid until release)
  device: Any  # put(host), already on the devices (None without `put`)
  ticket: int  # give it to Pipeline.release once the step that consumed `device` has finished


def aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised array whose data starts on a page boundary (anonymous mmap; usable for O_DIRECT)."""
  count = int(np.prod(shape))
  raw = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
  return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Pipeline:
  """The trainer's input pipeline: exactly `iterate_batches`' batches, from `start_step` on, delivered
  already on the devices.

  - a loader thread reads shuffle buffer k+1 while buffer k is cut: one task per (layer, window) on a
    pool of `read_threads` readers, straight into one of two preallocated host buffers
    (`reader.read_into`; no concatenation);
  - a cutter thread gathers each batch's rows (the plan's permutation) into a ring of preallocated
    batch arrays on `gather_threads` threads and puts them on the devices (`put`, explicit transfers);
    up to `depth` put batches wait in a queue for the step;
  - a ring slot is reused only after the consumer `release`s it, which it must do only once the step
    that read it has finished: on CPU a put may alias the host memory, and on a GPU the copy is
    asynchronous. The ring holds depth + in_flight + 1 slots, so a consumer that keeps at most
    `in_flight` steps unfinished never waits for a slot.
  Host memory: 2 buffers of shuffle_windows * window_rows rows and depth + in_flight + 1 batches, of the
  local layers. Errors of the readers (a damaged chunk) come out of the iteration.
  """

  _END = object()

  def __init__(
    self,
    plan: DataPlan,
    reader: RowReader,
    device_sources: Sequence[Sequence[int]],
    *,
    start_step: int = 0,
    put: Callable | None = None,
    depth: int = 2,
    in_flight: int = 2,
    read_threads: int = 4,
    gather_threads: int = 2,
  ):
    self._plan = plan
    self._reader = reader
    self._start_step = start_step
    self._put = put
    self._sources = [list(s) for s in device_sources]
    self._unique = sorted({s for src in self._sources for s in src})
    self._slot_of = {s: i for i, s in enumerate(self._unique)}
    probe = reader.read([self._unique[0]], 0, 1)
    d, dtype = probe.shape[-1], probe.dtype
    self._schedule = [
      b for b in plan.schedule() if b.n_batches > 0 and b.first_step + b.n_batches > start_step
    ]
    rows = max([sum(b - a for a, b in p.windows) for p in self._schedule] or [1])
    self._buffers = [aligned_empty((len(self._unique), rows, d), dtype) for _ in range(2)]
    n_slots = depth + in_flight + 1
    self._ring = [
      [aligned_empty((len(src), plan.batch_size, d), dtype) for src in self._sources] for _ in range(n_slots)
    ]
    self._free_slots: queue.Queue = queue.Queue()
    for i in range(n_slots):
      self._free_slots.put(i)
    self._free_buffers: queue.Queue = queue.Queue()
    for i in range(2):
      self._free_buffers.put(i)
    self._filled: queue.Queue = queue.Queue()
    self._out: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._read_pool = futures.ThreadPoolExecutor(read_threads, thread_name_prefix="sae-read")
    self._gather_pool = futures.ThreadPoolExecutor(gather_threads, thread_name_prefix="sae-gather")
    self.seconds = {"read": 0.0, "cut": 0.0, "put": 0.0}  # time the loader / cutter threads spent
    self._threads = [
      threading.Thread(target=self._load, daemon=True, name="sae-load"),
      threading.Thread(target=self._cut, daemon=True, name="sae-cut"),
    ]
    for t in self._threads:
      t.start()

  # ---- background threads ----------------------------------------------------------------------------

  def _take(self, q: queue.Queue):
    """q.get() that gives up (None) when the pipeline is closed."""
    while not self._stop.is_set():
      try:
        return q.get(timeout=0.1)
      except queue.Empty:
        continue
    return None

  def _give(self, q: queue.Queue, item) -> bool:
    while not self._stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _read_task(self, source: int, start: int, stop: int, out: np.ndarray) -> None:
    read_into = getattr(self._reader, "read_into", None)
    if read_into is not None:
      read_into(source, start, stop, out)
    else:
      out[...] = self._reader.read([source], start, stop)[0]

  def _load(self):
    try:
      for buf in self._schedule:
        index = self._take(self._free_buffers)
        if index is None:
          return
        t0 = time.perf_counter()
        block, tasks, offset = self._buffers[index], [], 0
        for a, b in buf.windows:
          for u, source in enumerate(self._unique):
            out = block[u, offset : offset + (b - a)]
            tasks.append(self._read_pool.submit(self._read_task, source, a, b, out))
          offset += b - a
        for task in tasks:
          task.result()
        self.seconds["read"] += time.perf_counter() - t0
        self._filled.put((buf, index))
      self._filled.put(self._END)
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
      self._filled.put(e)

  def _cut(self):
    try:
      while True:
        item = self._take(self._filled)
        if item is None:
          return
        if item is self._END:
          self._give(self._out, self._END)
          return
        if isinstance(item, BaseException):
          raise item
        buf, index = item
        block = self._buffers[index]
        perm = self._plan.row_permutation(buf)
        bs = self._plan.batch_size
        for i in range(max(0, self._start_step - buf.first_step), buf.n_batches):
          # Rows are sorted within the batch, as iterate_batches does (a batch is a set).
          idx = np.sort(perm[i * bs : (i + 1) * bs])
          slot = self._take(self._free_slots)
          if slot is None:
            return
          t0 = time.perf_counter()
          host = self._ring[slot]
          gathers = [
            # mode="clip": unbuffered (mode="raise" copies through a temporary); idx is in range.
            self._gather_pool.submit(np.take, block[self._slot_of[s]], idx, 0, host[d][j], "clip")
            for d, src in enumerate(self._sources)
            for j, s in enumerate(src)
          ]
          for g in gathers:
            g.result()
          t1 = time.perf_counter()
          device = self._put(host) if self._put is not None else None
          self.seconds["cut"] += t1 - t0
          self.seconds["put"] += time.perf_counter() - t1
          if not self._give(self._out, Batch(buf.first_step + i, host, device, slot)):
            return
        self._free_buffers.put(index)
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
      self._give(self._out, e)

  # ---- the consumer's side -------------------------------------------------------------------------------

  def __iter__(self) -> Iterator[Batch]:
    while True:
      item = self._out.get()
      if item is self._END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def release(self, ticket: int) -> None:
    """The step that consumed the batch with this ticket has finished: its ring slot may be reused."""
    self._free_slots.put(ticket)

  def close(self) -> None:
    self._stop.set()
    for t in self._threads:
      t.join(timeout=30)
    self._read_pool.shutdown(wait=True, cancel_futures=True)
    self._gather_pool.shutdown(wait=True, cancel_futures=True)
