"""The TensorStore activation store: reading, completeness and mismatch checks."""

import os

import ml_dtypes
import numpy as np
import pytest

from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io


def _make_store(path, complete=True):
  L, N, D, T = 3, 40, 8, 5
  acts = store_lib.create_array(os.path.join(path, "activations"), [L, N, D], "bfloat16", [1, 16, D])
  data = np.arange(L * N * D, dtype=np.float32).reshape(L, N, D).astype(ml_dtypes.bfloat16)
  acts.write(data).result()
  for name in ("token_ids", "doc_ids"):
    arr = store_lib.create_array(os.path.join(path, name), [10, T], "int32", [10, T])
    arr.write(np.arange(50, dtype=np.int32).reshape(10, T)).result()
  meta = {
    "model": "m",
    "d_model": D,
    "layers": [0, 1, 2],
    "dtype": "bfloat16",
    "seq_len": T,
    "n_rows": N,
    "n_windows": 10,
    "layer_stats": [{"mean_sq_norm": 1.0 + i} for i in range(L)],
  }
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  if complete:
    atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {})
  return data


def test_read_layers_and_rows(tmp_path):
  data = _make_store(str(tmp_path))
  store = store_lib.ActivationStore.open(str(tmp_path), expect={"model": "m", "d_model": 8})
  np.testing.assert_array_equal(store.read(slice(0, 3), 5, 20), data[:, 5:20])
  np.testing.assert_array_equal(store.read([0, 2], 0, 7), data[[0, 2], 0:7])
  np.testing.assert_array_equal(store.read(1, 3, 4), data[1, 3:4])
  assert store.read(0, 0, 1).dtype == ml_dtypes.bfloat16
  assert store.token_windows(2, 4).shape == (2, 5)
  np.testing.assert_allclose(store.mean_sq_norm(), [1.0, 2.0, 3.0])
  with pytest.raises(IndexError):
    store.read(0, 30, 41)


def test_incomplete_store_is_never_opened(tmp_path):
  _make_store(str(tmp_path), complete=False)
  with pytest.raises(IncompleteStoreError, match="incomplete"):
    store_lib.ActivationStore.open(str(tmp_path))
  with pytest.raises(IncompleteStoreError, match="run the extract stage"):
    store_lib.ActivationStore.open(str(tmp_path / "nothing"))


def test_mismatch_names_the_field(tmp_path):
  _make_store(str(tmp_path))
  with pytest.raises(StoreMismatchError, match=r"d_model: store has 8, config wants 16"):
    store_lib.ActivationStore.open(str(tmp_path), expect={"model": "m", "d_model": 16})
  with pytest.raises(StoreMismatchError, match=r"layers"):
    store_lib.ActivationStore.open(str(tmp_path), expect={"layers": [0, 1]})
