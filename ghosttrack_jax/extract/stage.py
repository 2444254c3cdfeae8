"""The `extract` stage: one model pass per batch writes every layer's residual stream to the store.

Two phases, both resumable:
  1. tokens (process 0): the corpus is packed into windows (see corpus.py) and written to
     `token_ids`/`doc_ids`; then process 0 creates the activation array (never again: a re-create would
     wipe what others wrote) and records the batch geometry in progress.json.
  2. activations (every process): windows run through the model in fixed batches (batch b is always
     windows [b*B, (b+1)*B)), and batches form chunk groups that fill one chunk (row-aligned, so no two
     writes share a chunk). Process p of P takes groups g with g % P == p. A finished group writes
     groups/<g>.json (its chunks' CRC-32 and per-batch statistics) only after its rows have landed, so
     a kill loses at most the groups in flight, which the rerun (with any process count) recomputes.
     The device->host copy of batch b overlaps the forward of batch b+1, and at most two groups'
     writes are in flight.
Then process 0 reduces the statistics in batch order (the same sums whatever the process count),
writes checksums.npy and meta.json, and last the COMPLETE marker.

Before any stage runs, `preflight` compares an existing store with the config on every field the config
determines, without loading the model (the pipeline calls it), so a changed model never trains on old
activations.

Memory per process: two chunk groups of rows plus two batches on the device, whatever the token count.
"""

import collections
import logging
import math
import os
import shutil
import time
from concurrent import futures

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax import lm
from ghosttrack_jax.errors import ConfigError, DataError, StoreMismatchError
from ghosttrack_jax.extract import corpus
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.lm import families, shapes
from ghosttrack_jax.lm import model as lm_model
from ghosttrack_jax.runtime import atomic_io, multihost, paths, progress

# Fields that identify a store: a store is reused only when all of them match.
IDENTITY_FIELDS = (
  "model",
  "model_source",
  "d_model",
  "layers",
  "dtype",
  "seq_len",
  "n_tokens_requested",
  "token_rule",
  "source_fingerprint",
)
_STATS = ("sum_sq_norm", "sum_norm", "max_norm")


def expected_meta(config, model) -> dict:
  """The fields that identify a store, with the loaded model's shapes."""
  return {
    "model": config.model.name,
    "model_source": config.model.source,
    "source_fingerprint": shapes.source_fingerprint(config.model),
    "d_model": int(model.d_model),
    "layers": [int(l) for l in model.layers],
    "dtype": config.extract.storage_dtype,
    "seq_len": int(config.data.seq_len),
    "n_tokens_requested": int(config.data.n_tokens),
    "corpus": corpus.describe(config.data.corpus),
    "token_rule": store_lib.token_rule(families.FAMILIES[config.model.family].window_bos),
  }


def expected_identity(config) -> tuple[dict, list[str]]:
  """The identity fields the config determines, computed without loading the model, and the fields
  that cannot be known that way (shapes of a hub model outside the local cache and the table)."""
  want = {
    "model": config.model.name,
    "model_source": config.model.source,
    "dtype": config.extract.storage_dtype,
    "seq_len": int(config.data.seq_len),
    "n_tokens_requested": int(config.data.n_tokens),
    "token_rule": store_lib.token_rule(families.FAMILIES[config.model.family].window_bos),
  }
  unknown = []
  try:
    arch = shapes.architecture(config.model)
  except ConfigError:
    unknown += ["d_model", "layers"]
  else:
    want["d_model"] = int(arch.d_model)
    want["layers"] = [int(l) for l in lm_model.check_layers(config.model.layers, arch.n_layers)]
  fingerprint = shapes.source_fingerprint(config.model)
  if fingerprint is None:
    unknown.append("source_fingerprint")
  else:
    want["source_fingerprint"] = fingerprint
  corpus_path = corpus.resolve_path(config.data.corpus)
  if corpus_path.startswith("hf:") or os.path.exists(corpus_path):
    want["corpus"] = corpus.describe(config.data.corpus)
  return want, unknown


def identity_problems(have: dict, want: dict) -> list[str]:
  """Field by field, where a store's meta.json differs from what the config determines. Fields the
  store does not record (older stores) are not compared."""
  problems = []
  for key in IDENTITY_FIELDS:
    if key not in want or key not in have:
      continue
    a, b = have[key], want[key]
    if isinstance(b, (list, tuple)):
      a, b = list(a or []), list(b)
    if a != b:
      problems.append(f"{key}: store has {a!r}, config wants {b!r}")
  if "corpus" in want and "corpus" in have and have["corpus"].get("sha256") != want["corpus"].get("sha256"):
    problems.append(f"corpus: store was made from {have['corpus']}, config reads {want['corpus']}")
  if have.get("complete"):
    rows = int(have.get("n_windows", -1)) * (int(have.get("seq_len", 0)) - 1)
    target = math.ceil(int(want["n_tokens_requested"]) / (int(want["seq_len"]) - 1))
    if int(have.get("n_rows", -1)) != rows or int(have.get("n_windows", -1)) > target:
      problems.append(
        f"rows: store has {have.get('n_rows')} rows in {have.get('n_windows')} windows, "
        f"config wants at most {target} windows of {int(want['seq_len']) - 1} rows"
      )
  return problems


def _mismatch_error(config, workdir: str, path: str, problems: list[str]) -> StoreMismatchError:
  mp = paths.for_config(config, workdir)
  return StoreMismatchError(
    f"the activation store at {path} was made for another configuration ({'; '.join(problems)}). "
    f"Nothing was run or changed. Use another --workdir, or delete {path} to extract again (and "
    f"{mp.checkpoints} and {mp.sae_results}, which were trained on it)."
  )


def preflight(config, workdir: str) -> None:
  """Refuses, before any stage runs, a store in the workdir (complete or partial) that another config
  made: StoreMismatchError naming each differing field and the fix. Loads no model."""
  path = paths.for_config(config, workdir).hidden_states
  meta_path = os.path.join(path, store_lib.META)
  if not os.path.exists(meta_path):
    return
  want, unknown = expected_identity(config)
  problems = identity_problems(atomic_io.read_json(meta_path), want)
  if problems:
    raise _mismatch_error(config, workdir, path, problems)
  if unknown:
    logging.info("store check: %s are checked once the model is loaded", ", ".join(unknown))


def _write_tokens(config, model, path: str) -> int:
  """Phase 1: packs the corpus into windows and writes token_ids/doc_ids. Returns the window count."""
  seq_len = config.data.seq_len
  target = math.ceil(config.data.n_tokens / (seq_len - 1))
  tok_arr = store_lib.create_array(
    os.path.join(path, "token_ids"), [target, seq_len], "int32", [min(target, 1024), seq_len]
  )
  doc_arr = store_lib.create_array(
    os.path.join(path, "doc_ids"), [target, seq_len], "int32", [min(target, 1024), seq_len]
  )

  def encode_batch(texts):
    return model.tokenizer(texts, add_special_tokens=False)["input_ids"]

  docs = corpus.iter_documents(config.data.corpus, config.data.min_chars)
  bos = model.tokenizer.bos_token_id if families.FAMILIES[config.model.family].window_bos else None
  windows = corpus.iter_windows(docs, encode_batch, model.eos_id, seq_len, bos_id=bos)
  block_t, block_d, n, start = [], [], 0, 0
  writes = []
  for tokens, doc_ids in progress.track(windows, "tokenise", "window", total=target):
    block_t.append(tokens)
    block_d.append(doc_ids)
    n += 1
    if len(block_t) == 1024 or n == target:
      writes += [tok_arr[start:n].write(np.stack(block_t)), doc_arr[start:n].write(np.stack(block_d))]
      block_t, block_d, start = [], [], n
    if n == target:
      break
  if block_t:
    writes += [tok_arr[start:n].write(np.stack(block_t)), doc_arr[start:n].write(np.stack(block_d))]
  for f in writes:
    f.result()
  if n == 0:
    raise DataError(
      f"corpus {config.data.corpus!r} yields no complete window of {seq_len} tokens: "
      "it is empty or too short; point --config.data.corpus at a larger text file"
    )
  if n < target:
    logging.warning(
      "corpus ran out after %d of %d windows (%d tokens instead of %d)",
      n,
      target,
      n * (seq_len - 1),
      config.data.n_tokens,
    )
    tok_arr.resize(exclusive_max=[n, seq_len], shrink_only=True).result()
    doc_arr.resize(exclusive_max=[n, seq_len], shrink_only=True).result()
  return n


def batch_fn(model, storage_dtype):
  """f(ids [B, T], n_valid) -> (rows [L, B*(T-1), D] in the storage dtype, statistics): one batch's
  device program, the model's forward and `postprocess_fn` in one jit, so that the float32 stack of
  the blocks' outputs is never written out before its cast (5% of a batch on CPU)."""
  post = postprocess_fn(storage_dtype)

  @jax.jit
  def run(params, ids, n_valid):
    return post(model.residuals_fn(params, ids, jnp.ones_like(ids)), n_valid)

  return lambda ids, n_valid: run(model.params, jnp.asarray(ids, jnp.int32), n_valid)


def postprocess_fn(storage_dtype):
  """Drops position 0, flattens rows, casts to the storage dtype and sums per-layer norm statistics."""

  @jax.jit
  def post(resid, n_valid):  # resid [L, B, T, D]; only the first n_valid sequences are real
    L, B, T, D = resid.shape
    x = resid[:, :, 1:, :].astype(storage_dtype)
    valid = (jnp.arange(B) < n_valid)[None, :, None]
    xf = x.astype(jnp.float32)
    sq = jnp.sum(xf * xf, axis=-1)  # [L, B, T-1]
    norm = jnp.sqrt(sq)
    stats = {
      "sum_sq_norm": jnp.sum(jnp.where(valid, sq, 0.0), axis=(1, 2)),
      "sum_norm": jnp.sum(jnp.where(valid, norm, 0.0), axis=(1, 2)),
      "max_norm": jnp.max(jnp.where(valid, norm, 0.0), axis=(1, 2)),
      "non_finite": jnp.sum(jnp.where(valid[..., None], ~jnp.isfinite(xf), False)),
    }
    return x.reshape(L, B * (T - 1), D), stats

  return post


def _save_progress(path: str, progress: dict) -> None:
  atomic_io.atomic_write_json(os.path.join(path, store_lib.PROGRESS), progress)


def run(config, workdir: str) -> None:
  """Runs (or resumes, or skips when complete) extraction into cache/<model>/hidden_states/.

  With several processes every process calls this (a collective stage): process 0 writes the tokens
  and creates the arrays, every process extracts its chunk groups, process 0 finishes the store.
  """
  path = paths.for_config(config, workdir).hidden_states
  corpus_path = corpus.resolve_path(config.data.corpus)
  if not corpus_path.startswith("hf:") and not os.path.exists(corpus_path):
    corpus.iter_documents(corpus_path)  # raises the DataError that explains the fix
  preflight(config, workdir)
  complete = os.path.exists(os.path.join(path, store_lib.COMPLETE))
  if complete and not {"d_model", "layers"} & set(expected_identity(config)[1]):
    meta = atomic_io.read_json(os.path.join(path, store_lib.META))
    logging.info("activation store %s is complete (%d rows); skipping extraction", path, meta["n_rows"])
    return
  model = lm.load_model(config.model)
  want = expected_meta(config, model)
  meta_path = os.path.join(path, store_lib.META)
  if os.path.exists(meta_path):
    problems = identity_problems(atomic_io.read_json(meta_path), want)
    if problems:
      raise _mismatch_error(config, workdir, path, problems)
  if complete:
    logging.info("activation store %s is complete; skipping extraction", path)
    return
  progress = store_lib.read_progress(path)
  if multihost.is_primary() and (progress is None or progress.get("phase") != "activations"):
    os.makedirs(path, exist_ok=True)
    atomic_io.atomic_write_json(meta_path, {**want, "complete": False, "format": store_lib.FORMAT})
    _save_progress(path, {"phase": "tokens"})
    n_windows = _write_tokens(config, model, path)
    geometry = _geometry(config, n_windows)
    store_lib.create_array(
      os.path.join(path, "activations"),
      [len(model.layers), geometry["n_rows"], model.d_model],
      config.extract.storage_dtype,
      [1, min(geometry["group_rows"], geometry["n_rows"]), model.d_model],
    )
    _save_progress(path, {"phase": "activations", **geometry})
  multihost.barrier("ghosttrack_extract_setup")
  progress = store_lib.read_progress(path)
  # Rows are placed by batch index: a resumed run must use the batch geometry of the first one.
  for key in ("batch_size", "chunk_rows"):
    if progress.get(key) != config.extract[key]:
      raise StoreMismatchError(
        f"the half-written store at {path} was started with extract.{key}={progress.get(key)}; "
        f"this run has {config.extract[key]}. Rerun with --config.extract.{key}={progress.get(key)} "
        "to resume, or delete that folder to start over."
      )
  geometry = _geometry(config, int(progress["n_windows"]))
  _extract_groups(config, model, path, geometry)
  multihost.barrier("ghosttrack_extract_groups")
  if multihost.is_primary():
    _finish(path, want, geometry, len(model.layers))


def _geometry(config, n_windows: int) -> dict:
  """Batch and chunk-group layout of the activation array (fixed once the array exists)."""
  seq_len, batch = int(config.data.seq_len), int(config.extract.batch_size)
  rows_per_batch = batch * (seq_len - 1)
  n_batches = math.ceil(n_windows / batch)
  # Whole batches that fill about one chunk, so each group write covers whole chunks.
  batches_per_group = max(1, round(config.extract.chunk_rows / rows_per_batch))
  return {
    "n_windows": n_windows,
    "n_rows": n_windows * (seq_len - 1),
    "batch_size": batch,
    "chunk_rows": int(config.extract.chunk_rows),
    "n_batches": n_batches,
    "batches_per_group": batches_per_group,
    "group_rows": batches_per_group * rows_per_batch,
    "n_groups": math.ceil(n_batches / batches_per_group),
  }


class _GroupWriter:
  """Assembles a chunk group's rows, writes them (at most `max_pending` groups in flight), computes
  their chunks' CRC-32 on a thread pool, and records groups/<g>.json once the rows have landed."""

  def __init__(self, path, acts, geometry, n_layers, d_model, dtype, max_pending=2):
    self.path, self.acts, self.g = path, acts, geometry
    self.max_pending = max_pending
    self.shape = (n_layers, geometry["group_rows"], d_model)
    self.buffers = collections.deque(np.empty(self.shape, dtype) for _ in range(max_pending))
    self.pending: collections.deque = collections.deque()
    self.crc_pool = futures.ThreadPoolExecutor(min(8, max(1, n_layers)), thread_name_prefix="extract-crc")
    self.group = None

  def start(self, group: int):
    self.group, self.fill, self.stats = group, 0, []
    self.buffer = self.buffers.popleft() if self.g["batches_per_group"] > 1 else None

  def add(self, x: np.ndarray, stats: dict):
    """x [L, n_real, D] host rows of the group's next batch; stats of the batch (host)."""
    n = x.shape[1]
    if self.buffer is None:
      self.data = x  # one batch per group: written as fetched (no host copy)
    else:
      self.buffer[:, self.fill : self.fill + n] = x
    self.fill += n
    self.stats.append({k: [float(v) for v in np.asarray(stats[k])] for k in _STATS})

  def finish_group(self):
    data = self.data if self.buffer is None else self.buffer[:, : self.fill]
    row0 = self.group * self.g["group_rows"]
    chunk_rows = min(self.g["group_rows"], self.g["n_rows"])
    pad = (chunk_rows - self.fill) * int(np.prod(data.shape[2:])) * data.dtype.itemsize
    write = self.acts[:, row0 : row0 + self.fill].write(data)
    crcs = [self.crc_pool.submit(store_lib.crc32, data[l], pad) for l in range(data.shape[0])]
    self.pending.append((self.group, write, crcs, self.stats, self.buffer, data))
    while len(self.pending) >= self.max_pending:
      self._land_oldest()

  def _land_oldest(self):
    group, write, crcs, stats, buffer, _ = self.pending.popleft()
    write.result()  # rows durable before the group is recorded
    record = {"group": group, "crc32": [c.result() for c in crcs], "batch_stats": stats}
    atomic_io.atomic_write_json(store_lib.group_file(self.path, group), record)
    if buffer is not None:
      self.buffers.append(buffer)

  def close(self):
    while self.pending:
      self._land_oldest()
    self.crc_pool.shutdown(wait=True)


def _extract_groups(config, model, path: str, g: dict) -> None:
  """Phase 2 on this process: its chunk groups that are not done yet (see the module docstring)."""
  rank, count = multihost.process_index(), multihost.process_count()
  done = store_lib.groups_done(path)
  mine = [k for k in range(g["n_groups"]) if k % count == rank and k not in done]
  os.makedirs(os.path.join(path, store_lib.GROUPS), exist_ok=True)
  if not mine:
    return
  if len(done):
    logging.info("resuming extraction: %d of %d chunk groups done", len(done), g["n_groups"])
  B, rows_per_window = g["batch_size"], int(config.data.seq_len) - 1
  acts = store_lib.open_array(os.path.join(path, "activations"), read_only=False)
  tokens = store_lib.open_array(os.path.join(path, "token_ids"))
  forward = batch_fn(model, jnp.dtype(config.extract.storage_dtype))
  np_dtype = store_lib.NP_DTYPES[config.extract.storage_dtype]
  writer = _GroupWriter(path, acts, g, len(model.layers), model.d_model, np_dtype)
  batches = [
    (k, b)
    for k in mine
    for b in range(k * g["batches_per_group"], min((k + 1) * g["batches_per_group"], g["n_batches"]))
  ]

  def read_ids(b):
    w0, w1 = b * B, min((b + 1) * B, g["n_windows"])
    return tokens[w0:w1].read(), w1 - w0

  t0, tokens_done = time.time(), 0
  bar = progress.Progress(len(batches), "extract", "batch")
  lagged = None  # the previous batch, still on the device: fetched after the next forward is queued
  next_ids = read_ids(batches[0][1])

  def land(item):
    nonlocal tokens_done
    k, b, x, stats, n_valid = item
    x, stats = jax.device_get((x, stats))
    if stats["non_finite"]:
      raise DataError(
        f"batch {b}: {int(stats['non_finite'])} activation values are not finite in "
        f"{config.extract.storage_dtype}; use --config.extract.storage_dtype=bfloat16 "
        "(float16 overflows above 65504) or check the model weights"
      )
    if writer.group != k:
      writer.start(k)
    n_real = n_valid * rows_per_window
    writer.add(x[:, :n_real], stats)
    last_of_group = b == min((k + 1) * g["batches_per_group"], g["n_batches"]) - 1
    if last_of_group:
      writer.finish_group()
    tokens_done += n_real
    bar.update(1, tok_s=f"{tokens_done / max(time.time() - t0, 1e-9):,.0f}")

  try:
    for i, (k, b) in enumerate(batches):
      future, n_valid = next_ids
      ids = future.result()
      if i + 1 < len(batches):
        next_ids = read_ids(batches[i + 1][1])  # the next batch's tokens load during this forward
      if len(ids) < B:  # fixed batch shape: pad with copies of the last window, rows not written
        ids = np.concatenate([ids, np.repeat(ids[-1:], B - len(ids), axis=0)])
      x, stats = forward(ids, n_valid)
      x.copy_to_host_async()
      if lagged is not None:
        land(lagged)
      lagged = (k, b, x, stats, n_valid)
    land(lagged)
  finally:
    bar.close()
    writer.close()
  elapsed = time.time() - t0
  logging.info(
    "extracted %d tokens x %d layers in %.1f s (%.0f tokens/s) on process %d of %d",
    tokens_done,
    len(model.layers),
    elapsed,
    tokens_done / max(elapsed, 1e-9),
    rank,
    count,
  )


def _finish(path: str, want: dict, g: dict, n_layers: int) -> None:
  """Process 0, after every group has landed: statistics in batch order, checksums, meta, COMPLETE."""
  missing = sorted(set(range(g["n_groups"])) - store_lib.groups_done(path))
  if missing:
    raise DataError(
      f"extraction into {path} ended with chunk groups {missing[:10]} not written; rerun the extract "
      "stage, which recomputes them"
    )
  crcs = np.zeros((n_layers, g["n_groups"]), np.uint32)
  acc = {"sum_sq_norm": [0.0] * n_layers, "sum_norm": [0.0] * n_layers, "max_norm": [0.0] * n_layers}
  for k in range(g["n_groups"]):
    record = atomic_io.read_json(store_lib.group_file(path, k))
    crcs[:, k] = record["crc32"]
    for batch in record["batch_stats"]:  # batch order, one batch at a time, in float64
      for key in ("sum_sq_norm", "sum_norm"):
        acc[key] = [a + b for a, b in zip(acc[key], batch[key])]
      acc["max_norm"] = [max(a, b) for a, b in zip(acc["max_norm"], batch["max_norm"])]
  n_rows = g["n_rows"]
  layer_stats = [
    {
      "layer": layer,
      "mean_sq_norm": acc["sum_sq_norm"][i] / n_rows,
      "mean_norm": acc["sum_norm"][i] / n_rows,
      "max_norm": acc["max_norm"][i],
    }
    for i, layer in enumerate(want["layers"])
  ]
  meta = {
    **want,
    "complete": True,
    "format": store_lib.FORMAT,
    "n_windows": g["n_windows"],
    "n_rows": n_rows,
    "chunk_rows": min(g["group_rows"], n_rows),
    "layer_stats": layer_stats,
    "checksums_sha256": store_lib.write_checksums(path, crcs),
    "token_checksums": store_lib.token_checksums(path),
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {"n_rows": n_rows})
  # Leftovers of the extraction (harmless if a kill stops this: the store is complete). The groups folder
  # goes as a whole: a kill during a group record's write leaves a temporary file there.
  os.remove(os.path.join(path, store_lib.PROGRESS))
  shutil.rmtree(os.path.join(path, store_lib.GROUPS))
  logging.info("activation store complete: %s (%d rows, %d layers)", path, n_rows, len(layer_stats))
