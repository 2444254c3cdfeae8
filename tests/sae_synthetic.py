"""Synthetic activation stores and configs for the SAE tests (no language model needed).

Rows follow a sparse generative model: each token is a sum of a few random unit "true feature"
directions with exponential magnitudes, plus a little noise and a per-layer offset and scale, so an SAE
can find a sparse code and JumpReLU's L0 has somewhere to go.
"""

import os

import ml_dtypes
import numpy as np

from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io
from tests import tiny_pipeline  # as this module is imported: `from tests import ...`, also in children

REPO = tiny_pipeline.REPO


def sparse_rows(
  rng,
  n: int,
  d: int,
  n_true: int = 64,
  active: int = 4,
  noise: float = 0.02,
  dirs=None,
  offset=None,
  scale: float = 1.0,
) -> np.ndarray:
  if dirs is None:
    dirs = rng.normal(size=(n_true, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  if offset is None:
    offset = np.zeros(d)
  idx = np.stack([rng.choice(len(dirs), active, replace=False) for _ in range(n)])
  mags = rng.exponential(1.0, size=(n, active))
  x = np.einsum("na,nad->nd", mags, dirs[idx]) + noise * rng.normal(size=(n, d)) + offset
  return (scale * x).astype(np.float32)


def make_store(
  path: str,
  n_layers: int = 3,
  d: int = 16,
  n_windows: int = 64,
  seq_len: int = 17,
  chunk_rows: int = 128,
  seed: int = 0,
  n_true: int = 64,
  active: int = 4,
  model: str = "synthetic",
) -> np.ndarray:
  """Writes a complete store; returns the float32 data [L, rows, D] (as stored, bf16-rounded)."""
  rng = np.random.default_rng(seed)
  rows = n_windows * (seq_len - 1)
  dirs = rng.normal(size=(n_true, d))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  data = np.stack(
    [
      sparse_rows(
        rng, rows, d, dirs=dirs, active=active, offset=rng.normal(size=d) * 0.3, scale=1.0 + 2.0 * l
      )
      for l in range(n_layers)
    ]
  )
  data = data.astype(ml_dtypes.bfloat16)
  acts = store_lib.create_array(
    os.path.join(path, "activations"), [n_layers, rows, d], "bfloat16", [1, chunk_rows, d]
  )
  acts.write(data).result()
  toks = rng.integers(0, 100, size=(n_windows, seq_len), dtype=np.int32)
  for name in ("token_ids", "doc_ids"):
    arr = store_lib.create_array(
      os.path.join(path, name), [n_windows, seq_len], "int32", [n_windows, seq_len]
    )
    arr.write(toks).result()
  f32 = data.astype(np.float32)
  stats = [
    {
      "mean_sq_norm": float(np.mean(np.sum(f32[l] ** 2, axis=1))),
      "mean_norm": float(np.mean(np.linalg.norm(f32[l], axis=1))),
      "max_norm": float(np.max(np.linalg.norm(f32[l], axis=1))),
    }
    for l in range(n_layers)
  ]
  # Per-chunk checksums as the extract stage records them (a partial last chunk is stored padded).
  n_chunks = -(-rows // chunk_rows)
  crcs = np.zeros((n_layers, n_chunks), np.uint32)
  for l in range(n_layers):
    for c in range(n_chunks):
      part = data[l, c * chunk_rows : (c + 1) * chunk_rows]
      crcs[l, c] = store_lib.crc32(part, (chunk_rows - len(part)) * d * 2)
  meta = {
    "model": model,
    "layers": list(range(n_layers)),
    "d_model": d,
    "dtype": "bfloat16",
    "seq_len": seq_len,
    "n_windows": n_windows,
    "n_rows": rows,
    "layer_stats": stats,
    "format": store_lib.FORMAT,
    "checksums_sha256": store_lib.write_checksums(path, crcs),
    "token_checksums": store_lib.token_checksums(path),
  }
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {})
  return f32


def tiny_config(**overrides):
  """configs/tiny.py with SAE settings sized for the synthetic store, then `overrides` ("a.b": v)."""
  config = tiny_pipeline.load_config()
  config.model.name = "synthetic"
  config.sae.width = 64
  config.sae.l0_warmup_steps = 20
  config.sae.threshold_init = 0.05
  config.sae.bandwidth = 0.05
  config.sae.l0_coefficient = 0.05
  config.sae_training.batch_size = 64
  config.sae_training.lr = 1e-3
  config.sae_training.lr_warmup_steps = 5
  config.sae_training.epochs = 1
  config.sae_training.shuffle_windows = 2
  config.sae_training.checkpoint_every = 10
  config.sae_training.log_every = 5
  config.sae_training.sparse_capacity = 32
  config.sae_training.eval_ce = False
  config.sae_training.eval_tokens = 256
  return tiny_pipeline.set_fields(config, overrides)
