"""The `extract` stage: one model pass per batch writes every layer's residual stream to the store.

Two phases, both resumable:
  1. tokens: the corpus is packed into windows (see corpus.py) and written to `token_ids`/`doc_ids`.
  2. activations: windows are run through the model in fixed batches (batch b is always windows
     [b*B, (b+1)*B), so a resumed run computes exactly what an uninterrupted one would); rows are
     buffered in RAM and flushed in groups of whole batches that fill one chunk, then `progress.json`
     records the batches whose rows are durably written. A kill at any moment loses at most the
     groups in flight, which the rerun recomputes and rewrites in place: no duplicates, no gaps.
Only after the last write are meta.json's statistics filled in and the COMPLETE marker written.

Memory: one chunk group of rows plus one batch on the device, whatever the token count.
"""

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm import tqdm

from ghosttrack_jax import lm
from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.extract import corpus
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, paths

_NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def expected_meta(config, model) -> dict:
  """The fields that identify a store: a store is reused only when all of them match."""
  return {
    "model": config.model.name,
    "model_source": config.model.source,
    "d_model": int(model.d_model),
    "layers": [int(l) for l in model.layers],
    "dtype": config.extract.storage_dtype,
    "seq_len": int(config.data.seq_len),
    "n_tokens_requested": int(config.data.n_tokens),
    "corpus": corpus.describe(config.data.corpus),
    "token_rule": store_lib.TOKEN_RULE,
  }


def _check_existing(path: str, want: dict) -> None:
  """Refuses to touch a store (complete or partial) that was made for another configuration."""
  meta_path = os.path.join(path, store_lib.META)
  if not os.path.exists(meta_path):
    return
  have = atomic_io.read_json(meta_path)
  problems = store_lib.describe_mismatch(have, want)
  for key in ("model_source", "n_tokens_requested"):
    if have.get(key) != want[key]:
      problems.append(f"{key}: store has {have.get(key)!r}, config wants {want[key]!r}")
  if have.get("corpus", {}).get("sha256") != want["corpus"].get("sha256"):
    problems.append(f"corpus: store was made from {have.get('corpus')}, config reads {want['corpus']}")
  if problems:
    raise StoreMismatchError(
      f"the activation store at {path} was made for another configuration ({'; '.join(problems)}). "
      "Nothing was changed. Use another --workdir, or delete that folder to extract again."
    )


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
  windows = corpus.iter_windows(docs, encode_batch, model.eos_id, seq_len)
  block_t, block_d, n, start = [], [], 0, 0
  futures = []
  for tokens, doc_ids in tqdm(windows, total=target, desc="tokenise", unit="win", leave=False):
    block_t.append(tokens)
    block_d.append(doc_ids)
    n += 1
    if len(block_t) == 1024 or n == target:
      futures += [tok_arr[start:n].write(np.stack(block_t)), doc_arr[start:n].write(np.stack(block_d))]
      block_t, block_d, start = [], [], n
    if n == target:
      break
  if block_t:
    futures += [tok_arr[start:n].write(np.stack(block_t)), doc_arr[start:n].write(np.stack(block_d))]
  for f in futures:
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


def _postprocess_fn(storage_dtype):
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


def _new_stats(n_layers: int) -> dict:
  return {"sum_sq_norm": [0.0] * n_layers, "sum_norm": [0.0] * n_layers, "max_norm": [0.0] * n_layers}


def _add_stats(acc: dict, batch: dict) -> None:
  for key in ("sum_sq_norm", "sum_norm"):
    acc[key] = [a + float(b) for a, b in zip(acc[key], batch[key])]
  acc["max_norm"] = [max(a, float(b)) for a, b in zip(acc["max_norm"], batch["max_norm"])]


def _save_progress(path: str, progress: dict) -> None:
  atomic_io.atomic_write_json(os.path.join(path, store_lib.PROGRESS), progress)


def run(config, workdir: str) -> None:
  """Runs (or resumes, or skips when complete) extraction into cache/<model>/hidden_states/."""

  path = paths.for_config(config, workdir).hidden_states
  corpus_path = corpus.resolve_path(config.data.corpus)
  if not corpus_path.startswith("hf:") and not os.path.exists(corpus_path):
    corpus.iter_documents(corpus_path)  # raises the DataError that explains the fix
  if os.path.exists(os.path.join(path, store_lib.COMPLETE)):
    meta = atomic_io.read_json(os.path.join(path, store_lib.META))
    problems = store_lib.describe_mismatch(
      meta,
      {"model": config.model.name, "dtype": config.extract.storage_dtype, "seq_len": config.data.seq_len},
    )
    if problems:
      raise StoreMismatchError(
        f"the activation store at {path} was made for another configuration "
        f"({'; '.join(problems)}). Nothing was changed. Use another --workdir, or delete that "
        "folder to extract again."
      )
    logging.info("activation store %s is complete (%d rows); skipping extraction", path, meta["n_rows"])
    return

  model = lm.load_model(config.model)
  want = expected_meta(config, model)
  _check_existing(path, want)
  os.makedirs(path, exist_ok=True)
  progress = store_lib.read_progress(path)
  if progress is None or progress.get("phase") == "tokens":
    atomic_io.atomic_write_json(os.path.join(path, store_lib.META), {**want, "complete": False})
    _save_progress(path, {"phase": "tokens"})
    n_windows = _write_tokens(config, model, path)
    progress = {
      "phase": "activations",
      "n_windows": n_windows,
      "batches_done": 0,
      "batch_size": int(config.extract.batch_size),
      "chunk_rows": int(config.extract.chunk_rows),
      "stats": _new_stats(len(model.layers)),
    }
    _save_progress(path, progress)
  _extract_activations(config, model, path, want, progress)


def _extract_activations(config, model, path: str, want: dict, progress: dict) -> None:
  seq_len, B = config.data.seq_len, config.extract.batch_size
  n_windows = progress["n_windows"]
  n_layers, d_model = len(model.layers), model.d_model
  rows_per_window = seq_len - 1
  rows_per_batch = B * rows_per_window
  n_rows = n_windows * rows_per_window
  n_batches = math.ceil(n_windows / B)
  # Flush whole batches that fill about one chunk, so each write covers whole chunks.
  batches_per_group = max(1, round(config.extract.chunk_rows / rows_per_batch))
  chunk_rows = batches_per_group * rows_per_batch
  act_path = os.path.join(path, "activations")
  if progress["batches_done"] == 0:
    acts = store_lib.create_array(
      act_path,
      [n_layers, n_rows, d_model],
      config.extract.storage_dtype,
      [1, min(chunk_rows, n_rows), d_model],
    )
  else:
    acts = store_lib.open_array(act_path, read_only=False)
  tokens = store_lib.open_array(os.path.join(path, "token_ids"))
  np_dtype = _NP_DTYPES[config.extract.storage_dtype]
  post = _postprocess_fn(jnp.dtype(config.extract.storage_dtype))

  start_batch = progress["batches_done"]
  # Rows are placed by batch index: a resumed run must use the batch geometry of the first one.
  for key in ("batch_size", "chunk_rows"):
    if start_batch and progress.get(key) != config.extract[key]:
      raise StoreMismatchError(
        f"the half-written store at {path} was started with extract.{key}={progress.get(key)}; "
        f"this run has {config.extract[key]}. Rerun with --config.extract.{key}={progress.get(key)} "
        "to resume, or delete that folder to start over."
      )
  if start_batch:
    logging.info("resuming extraction at batch %d of %d", start_batch, n_batches)
  pending: list = []  # (futures, progress after they land)
  buffer = np.empty((n_layers, chunk_rows, d_model), np_dtype)
  fill, group_start_row = 0, start_batch * rows_per_batch
  t0, tokens_done = time.time(), 0
  bar = tqdm(total=n_batches, initial=start_batch, desc="extract", unit="batch")
  for b in range(start_batch, n_batches):
    w0, w1 = b * B, min((b + 1) * B, n_windows)
    ids = tokens[w0:w1].read().result()
    if len(ids) < B:  # fixed batch shape: pad with copies of the last window, rows not written
      ids = np.concatenate([ids, np.repeat(ids[-1:], B - len(ids), axis=0)])
    ids = jnp.asarray(ids)
    resid = model.residuals(ids, jnp.ones_like(ids))
    x, stats = post(resid, w1 - w0)
    stats = jax.device_get(stats)
    if stats["non_finite"]:
      raise DataError(
        f"batch {b}: {int(stats['non_finite'])} activation values are not finite in "
        f"{config.extract.storage_dtype}; use --config.extract.storage_dtype=bfloat16 "
        "(float16 overflows above 65504) or check the model weights"
      )
    n_real = (w1 - w0) * rows_per_window
    buffer[:, fill : fill + n_real] = np.asarray(x[:, :n_real])
    fill += n_real
    _add_stats(progress["stats"], stats)
    tokens_done += n_real
    bar.update(1)
    last = b == n_batches - 1
    # start_batch is always a group boundary: progress is only recorded at group ends.
    if (b + 1) % batches_per_group == 0 or last:
      for futures, done in pending:  # the previous group must land before its progress is recorded
        for f in futures:
          f.result()
        _save_progress(path, done)
      future = acts[:, group_start_row : group_start_row + fill].write(buffer[:, :fill].copy())
      pending = [
        (
          [future],
          {**progress, "batches_done": b + 1, "stats": {k: list(v) for k, v in progress["stats"].items()}},
        )
      ]
      group_start_row += fill
      fill = 0
      rate = tokens_done / max(time.time() - t0, 1e-9)
      bar.set_postfix(tok_s=f"{rate:,.0f}")
  bar.close()
  for futures, done in pending:
    for f in futures:
      f.result()
    _save_progress(path, done)
  elapsed = time.time() - t0
  logging.info(
    "extracted %d tokens x %d layers in %.1f s (%.0f tokens/s)",
    tokens_done,
    n_layers,
    elapsed,
    tokens_done / max(elapsed, 1e-9),
  )
  _finish(path, want, progress, n_windows, n_rows, chunk_rows)


def _finish(path: str, want: dict, progress: dict, n_windows: int, n_rows: int, chunk_rows: int):
  s = progress["stats"]
  layer_stats = [
    {
      "layer": layer,
      "mean_sq_norm": s["sum_sq_norm"][i] / n_rows,
      "mean_norm": s["sum_norm"][i] / n_rows,
      "max_norm": s["max_norm"][i],
    }
    for i, layer in enumerate(want["layers"])
  ]
  meta = {
    **want,
    "complete": True,
    "n_windows": n_windows,
    "n_rows": n_rows,
    "chunk_rows": chunk_rows,
    "layer_stats": layer_stats,
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  os.remove(os.path.join(path, store_lib.PROGRESS))
  atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {"n_rows": n_rows})
  logging.info("activation store complete: %s (%d rows, %d layers)", path, n_rows, len(layer_stats))
