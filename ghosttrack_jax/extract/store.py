"""On-disk activation store: every layer's residual stream for the same tokens, in TensorStore zarr3.

Layout of a store directory (see docs/DESIGN.md):

  activations/   zarr3 [layer, row, d_model], bfloat16 or float16, chunks [1, chunk_rows, d_model]
  token_ids/     zarr3 int32 [window, seq_len]: the packed token windows the rows come from
  doc_ids/       zarr3 int32 [window, seq_len]: which corpus document each token belongs to
  meta.json      model, layers, d_model, dtype, shapes, token rule, per-layer norm statistics
  progress.json  extraction progress (only while incomplete)
  COMPLETE       written last; a store without it is never opened for reading

Row r of `activations` is window r // (seq_len - 1), position 1 + r % (seq_len - 1): position 0 of every
window is not stored (its residual norm is an outlier, the attention sink).

Chunks are one layer tall so that a layer's rows are read without touching other layers, and a trainer
reads contiguous row windows (fast) and shuffles them in RAM (random row gathers are ~30x slower).
"""

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
import tensorstore as ts

from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io

COMPLETE = "COMPLETE"
META = "meta.json"
PROGRESS = "progress.json"
TOKEN_RULE = "packed windows; position 0 of each window excluded; no padding"

# Fields compared when a caller states what it expects the store to hold.
CHECKED_FIELDS = ("model", "d_model", "layers", "dtype", "seq_len")


def _spec(
  path: str, shape: Sequence[int] | None, dtype: str, chunks: Sequence[int] | None, create: bool
) -> dict:
  spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
  if create:
    spec["metadata"] = {
      "shape": list(shape),
      "data_type": dtype,
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
      # Raw bytes: residuals barely compress (~8%) and compression slows reads several-fold.
      "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }
    spec["create"] = True
    spec["delete_existing"] = True
  return spec


def create_array(path: str, shape: Sequence[int], dtype: str, chunks: Sequence[int]) -> ts.TensorStore:
  return ts.open(_spec(path, shape, dtype, chunks, create=True)).result()


def open_array(path: str, read_only: bool = True) -> ts.TensorStore:
  mode = {"open": True}
  if read_only:
    return ts.open(_spec(path, None, "", None, create=False), read=True, write=False, **mode).result()
  return ts.open(_spec(path, None, "", None, create=False), **mode).result()


def describe_mismatch(meta: dict, expect: dict) -> list[str]:
  """Lists, field by field, where `meta` differs from `expect` (only fields present in `expect`)."""
  problems = []
  for key in CHECKED_FIELDS:
    if key in expect and expect[key] is not None:
      want, have = expect[key], meta.get(key)
      if isinstance(want, (list, tuple)):
        want, have = list(want), list(have or [])
      if want != have:
        problems.append(f"{key}: store has {have!r}, config wants {want!r}")
  return problems


@dataclasses.dataclass
class ActivationStore:
  """A complete store opened read-only."""

  path: str
  meta: dict
  activations: ts.TensorStore
  token_ids: ts.TensorStore
  doc_ids: ts.TensorStore

  @classmethod
  def open(cls, path: str, expect: dict | None = None) -> "ActivationStore":
    """Opens a complete store; `expect` (model, d_model, layers, dtype, seq_len) is checked field by field."""
    if not os.path.exists(os.path.join(path, META)):
      raise IncompleteStoreError(
        f"no activation store at {path}: run the extract stage first (--stages=extract)"
      )
    if not os.path.exists(os.path.join(path, COMPLETE)):
      raise IncompleteStoreError(
        f"activation store {path} is incomplete (no {COMPLETE} marker): rerun the extract stage, "
        "which resumes where it stopped"
      )
    meta = atomic_io.read_json(os.path.join(path, META))
    if expect:
      problems = describe_mismatch(meta, expect)
      if problems:
        raise StoreMismatchError(
          f"activation store {path} was made for another configuration ({'; '.join(problems)}). "
          "Use another --workdir, or delete that folder to extract again."
        )
    return cls(
      path=path,
      meta=meta,
      activations=open_array(os.path.join(path, "activations")),
      token_ids=open_array(os.path.join(path, "token_ids")),
      doc_ids=open_array(os.path.join(path, "doc_ids")),
    )

  @property
  def n_rows(self) -> int:
    return int(self.meta["n_rows"])

  @property
  def n_windows(self) -> int:
    return int(self.meta["n_windows"])

  @property
  def rows_per_window(self) -> int:
    return int(self.meta["seq_len"]) - 1

  @property
  def layers(self) -> list[int]:
    return list(self.meta["layers"])

  @property
  def d_model(self) -> int:
    return int(self.meta["d_model"])

  def read(self, layer_indices: slice | Sequence[int] | int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the given layer positions (indices into `layers`), in storage dtype.

    Returns [n_layers_selected, stop - start, d_model] (or [rows, d_model] for an int index).
    """
    if not 0 <= start <= stop <= self.n_rows:
      raise IndexError(f"rows [{start}, {stop}) outside the store's {self.n_rows} rows")
    if isinstance(layer_indices, (list, tuple, np.ndarray)):
      layer_indices = list(layer_indices)
      if layer_indices == list(range(layer_indices[0], layer_indices[-1] + 1)):
        layer_indices = slice(layer_indices[0], layer_indices[-1] + 1)
    return self.activations[layer_indices, start:stop].read().result()

  def token_windows(self, start: int, stop: int) -> np.ndarray:
    """Token ids of windows [start, stop): [n, seq_len] int32."""
    return self.token_ids[start:stop].read().result()

  def document_ids(self, start: int, stop: int) -> np.ndarray:
    return self.doc_ids[start:stop].read().result()

  def mean_sq_norm(self) -> np.ndarray:
    """Per-layer E||x||^2 over all stored rows (for SAE input scaling)."""
    return np.asarray([s["mean_sq_norm"] for s in self.meta["layer_stats"]], dtype=np.float64)


def read_progress(path: str) -> dict | None:
  p = os.path.join(path, PROGRESS)
  if not os.path.exists(p):
    return None
  with open(p, encoding="utf-8") as f:
    return json.load(f)
