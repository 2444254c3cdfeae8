"""Input-pipeline throughput of the SAE trainer against the raw read bandwidth of the same chunk files.

  .venv/bin/python -m benchmarks.input_pipeline                  # make (or reuse) the store, measure
  .venv/bin/python -m benchmarks.input_pipeline --append         # ... and append to benchmarks/RESULTS.md

The store is GPT-2-medium shaped as one process of a 4-GPU node sees it: 6 layers of d_model 1024,
bfloat16, chunks of 8,176 rows (configs/gpt2_medium.py: 16 sequences x 511 rows), written by the real
store code with per-chunk checksums, --chunks chunks per layer (default 32: 3.2 GB). Measured, in one run:
  raw        a plain sequential read of every chunk file into one preallocated buffer (1 thread, 4 MiB
             reads); cold (our files evicted from the page cache with posix_fadvise) and warm;
  pipeline   train.data.Pipeline, exactly as train.loop drives it (batches of 4096 rows, shuffle
             buffers of 8 windows, every batch put on the device with the layout's explicit puts, a
             trivial jitted step per batch, a ring slot released once its step has finished), with the
             chunks' CRC-32 checked on every read (the default) and without;
  old        the previous loop's way: iterate_batches on the main thread (TensorStore reads,
             np.concatenate, a gather), np.stack, an implicit copy in the step call.
For each: rows/s delivered to the device, MB/s of store rows, and the main thread's CPU time per step
(time.thread_time: what the host loop itself costs, waits excluded). Beside them: the rows/s one A100
consumes at batch 4096 (planner roofline, 6 layers of 1024 -> 5120).
"""

import argparse
import dataclasses
import datetime
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, layer_parallel
from ghosttrack_jax.tools import planner
from ghosttrack_jax.train import data as train_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Shape:
  """The store and batch shapes (defaults: GPT-2 medium as one process of a 4-GPU node sees it)."""

  layers: int = 6
  d: int = 1024
  chunk: int = 8176  # rows per chunk (16 sequences x 511 rows)
  batch: int = 4096
  windows: int = 8  # windows per shuffle buffer


def make_store(path: str, chunks: int, shape: Shape) -> store_lib.ActivationStore:
  """A complete format-2 store of random bf16 rows (reused when it exists with the same shape)."""
  L, D, CHUNK = shape.layers, shape.d, shape.chunk
  rows = chunks * CHUNK
  if os.path.exists(os.path.join(path, store_lib.COMPLETE)):
    store = store_lib.ActivationStore.open(path)
    if store.n_rows == rows and store.d_model == D and len(store.layers) == L and store.chunk_rows == CHUNK:
      return store
  os.makedirs(path, exist_ok=True)
  acts = store_lib.create_array(os.path.join(path, "activations"), [L, rows, D], "bfloat16", [1, CHUNK, D])
  rng = np.random.default_rng(0)
  crcs = np.zeros((L, chunks), np.uint32)
  for layer in range(L):
    for c in range(chunks):
      block = rng.standard_normal((CHUNK, D), np.float32).astype(ml_dtypes.bfloat16)
      acts[layer, c * CHUNK : (c + 1) * CHUNK].write(block).result()
      crcs[layer, c] = store_lib.crc32(block)
  windows = max(1, rows // 511)
  for name in store_lib.TOKEN_ARRAYS:
    arr = store_lib.create_array(os.path.join(path, name), [windows, 512], "int32", [min(windows, 1024), 512])
    arr.write(np.zeros((windows, 512), np.int32)).result()
  meta = {
    "model": "bench_gpt2_medium_shape",
    "layers": list(range(L)),
    "d_model": D,
    "dtype": "bfloat16",
    "seq_len": 512,
    "n_windows": windows,
    "n_rows": rows,
    "layer_stats": [{"mean_sq_norm": float(D)} for _ in range(L)],
    "format": store_lib.FORMAT,
    "checksums_sha256": store_lib.write_checksums(path, crcs),
    "token_checksums": store_lib.token_checksums(path),
  }
  meta["n_rows"] = rows
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {})
  return store_lib.ActivationStore.open(path)


def chunk_files(store) -> list[str]:
  root = os.path.join(store.path, "activations")
  return [
    store_lib.chunk_file(root, l, c, 0) for l in range(len(store.layers)) for c in range(store.n_chunks)
  ]


def evict(files) -> None:
  """Drops our files (only ours) from the page cache."""
  for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def raw_read(files, shape: Shape) -> dict:
  buf = bytearray(4 << 20)
  view = memoryview(buf)
  total, t0, c0 = 0, time.perf_counter(), _cpu()
  for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
      while True:
        n = os.readv(fd, [view])
        if n <= 0:
          break
        total += n
    finally:
      os.close(fd)
  dt, dc = time.perf_counter() - t0, _cpu() - c0
  return {
    "MB/s": total / dt / 1e6,
    "rows/s": total / (shape.layers * shape.d * 2) / dt,
    "cpu_s": dc,
    "seconds": dt,
  }


def _plan(store, shape: Shape) -> train_data.DataPlan:
  return train_data.DataPlan(
    n_train_rows=store.n_rows,
    batch_size=shape.batch,
    window_rows=shape.chunk,
    shuffle_windows=shape.windows,
    epochs=1,
  )


def pipeline_run(store, layout, verify: bool, read_threads: int, gather_threads: int, shape: Shape) -> dict:
  LAYERS, D, BATCH = shape.layers, shape.d, shape.batch
  store.verify_reads = verify
  plan = _plan(store, shape)
  step = jax.jit(lambda x: jnp.sum(x[..., :1, :1].astype(jnp.float32)))
  sources = [[s for s in layout.device_sources(d)] for d in layout.local_indices]
  pipe = train_data.Pipeline(
    plan, store, sources, put=layout.put_blocks, read_threads=read_threads, gather_threads=gather_threads
  )
  warm = layout.put_blocks([np.zeros((LAYERS, BATCH, D), ml_dtypes.bfloat16)])
  step(warm).block_until_ready()  # compiled before the clock starts
  in_flight, n, host = [], 0, 0.0
  t0, c0 = time.perf_counter(), _cpu()
  for batch in pipe:
    h0 = time.thread_time()
    out = step(batch.device)
    in_flight.append((out, batch.ticket))
    if len(in_flight) > 2:
      o, ticket = in_flight.pop(0)
      o.block_until_ready()
      pipe.release(ticket)
    host += time.thread_time() - h0
    n += 1
  for o, ticket in in_flight:
    o.block_until_ready()
    pipe.release(ticket)
  dt, dc = time.perf_counter() - t0, _cpu() - c0
  seconds = dict(pipe.seconds)
  pipe.close()
  rows = n * BATCH
  return {
    "rows/s": rows / dt,
    "MB/s": rows * LAYERS * D * 2 / dt / 1e6,
    "host_ms_per_step": 1e3 * host / n,
    "cpu_s": dc,
    "steps": n,
    "seconds": dt,
    "threads": seconds,
  }


def old_run(store, layout, shape: Shape) -> dict:
  """The previous loop's data path on the main thread: iterate_batches, np.stack, implicit copy."""
  LAYERS, D, BATCH = shape.layers, shape.d, shape.batch
  plan = _plan(store, shape)
  step = jax.jit(lambda x: jnp.sum(x[..., :1, :1].astype(jnp.float32)))
  sources = [[s for s in layout.device_sources(d)] for d in layout.local_indices]
  host, n = 0.0, 0
  t0, c0 = time.perf_counter(), _cpu()

  class TsReader:  # the store as TensorStore read it before (no read_into)
    def read(self, layer_indices, start, stop):
      return store.activations[layer_indices, start:stop].read().result()

  for _, blocks in train_data.iterate_batches(plan, TsReader(), sources):
    h0 = time.thread_time()
    step(np.stack(blocks)).block_until_ready()
    host += time.thread_time() - h0
    n += 1
  dt, dc = time.perf_counter() - t0, _cpu() - c0
  rows = n * BATCH
  return {
    "rows/s": rows / dt,
    "MB/s": rows * LAYERS * D * 2 / dt / 1e6,
    "host_ms_per_step": 1e3 * host / n,
    "cpu_s": dc,
    "steps": n,
    "seconds": dt,
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--store", default=os.path.join(REPO, "runs", "bench_input_pipeline", "store"))
  ap.add_argument("--chunks", type=int, default=32, help="chunks per layer (8,176 rows, 16.7 MB each)")
  ap.add_argument("--read-threads", type=int, default=4)
  ap.add_argument("--gather-threads", type=int, default=2)
  ap.add_argument("--layers", type=int, default=Shape.layers)
  ap.add_argument("--d-model", type=int, default=Shape.d)
  ap.add_argument("--chunk-rows", type=int, default=Shape.chunk)
  ap.add_argument("--batch", type=int, default=Shape.batch)
  ap.add_argument("--shuffle-windows", type=int, default=Shape.windows)
  ap.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
  args = ap.parse_args(argv)
  shape = Shape(args.layers, args.d_model, args.chunk_rows, args.batch, args.shuffle_windows)
  LAYERS, D, CHUNK, BATCH, WINDOWS = shape.layers, shape.d, shape.chunk, shape.batch, shape.windows

  load0 = os.getloadavg()
  store = make_store(args.store, args.chunks, shape)
  files = chunk_files(store)
  layout = layer_parallel.make_layout(LAYERS, "pmap", devices=jax.devices()[:1])
  a100_s, _, _ = planner.sae_step_roofline(planner.PROFILES["a100"], D, 5120, LAYERS, BATCH)
  results = {}
  evict(files)
  results["raw, cold"] = raw_read(files, shape)
  results["raw, warm"] = raw_read(files, shape)
  for verify in (True, False):
    name = "pipeline, CRC checked" if verify else "pipeline, sizes only"
    evict(files)
    run = lambda: pipeline_run(store, layout, verify, args.read_threads, args.gather_threads, shape)
    results[f"{name}, cold"] = run()
    results[f"{name}, warm"] = run()
  evict(files)
  results["old loop's path, cold"] = old_run(store, layout, shape)
  results["old loop's path, warm"] = old_run(store, layout, shape)
  evict(files)
  results["raw, cold (again)"] = raw_read(files, shape)
  load1 = os.getloadavg()

  gb = len(files) * CHUNK * D * 2 / 1e9
  lines = [
    f"## Input pipeline vs raw reads, GPT-2-medium-shaped store, {datetime.date.today()}",
    "",
    f"- command: `python -m benchmarks.input_pipeline {' '.join(argv if argv is not None else sys.argv[1:])}`",
    f"- machine: {os.cpu_count()} cores, load average {load0[0]:.2f} before, {load1[0]:.2f} after; "
    f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.read_threads} read + "
    f"{args.gather_threads} gather threads",
    f"- store: {LAYERS} layers x {store.n_rows:,} rows x {D} bf16 = {gb:.2f} GB in {len(files)} chunk files of "
    f"{CHUNK * D * 2 / 1e6:.1f} MB; batches of {BATCH} rows, shuffle buffers of {WINDOWS} windows",
    f"- one A100 at batch {BATCH} ({LAYERS} layers of {D} -> 5120, planner roofline): {BATCH / a100_s:,.0f} rows/s "
    f"= {BATCH / a100_s * LAYERS * D * 2 / 1e9:.2f} GB/s of store reads per GPU",
    "",
  ]
  raw_cold = results["raw, cold"]["MB/s"]
  for name, r in results.items():
    line = f"- {name:34s} {r['rows/s']:>9,.0f} rows/s = {r['MB/s']:>6,.0f} MB/s"
    if "host_ms_per_step" in r:
      ref = results["raw, warm" if "warm" in name else "raw, cold"]["MB/s"]
      line += f" ({r['MB/s'] / ref:.0%} of raw {('warm' if 'warm' in name else 'cold')}); host {r['host_ms_per_step']:.3f} ms/step"
    line += f"; {gb * 1e3 / max(r['cpu_s'], 1e-9):,.0f} MB per CPU-second"
    lines.append(line)
  lines.append(
    f"- (raw cold first vs last: {raw_cold:,.0f} / {results['raw, cold (again)']['MB/s']:,.0f} MB/s)"
  )
  text = "\n".join(lines)
  print(text)
  if args.append:
    with open(os.path.join(REPO, "benchmarks", "RESULTS.md"), "a", encoding="utf-8") as f:
      f.write("\n" + text + "\n")


if __name__ == "__main__":
  main()
