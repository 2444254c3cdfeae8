"""The TensorStore activation store: reading, completeness and mismatch checks, and integrity: per-chunk
checksums recorded at writing and checked on every read, damaged chunks named with the fix."""

import os

import ml_dtypes
import numpy as np
import pytest

from ghosttrack_jax.errors import DamagedStoreError, IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io
from tests import sae_synthetic as syn


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


# ---- integrity: checksums recorded at writing, checked on every read ---------------------------------


def _synthetic(tmp_path, **kw):
  path = str(tmp_path / "store")
  data = syn.make_store(path, n_layers=2, d=16, n_windows=20, seq_len=17, chunk_rows=128, **kw)
  return path, data  # 320 rows: chunks of 128, 128 and a partial 64


def _chunk(path, layer, chunk):
  return store_lib.chunk_file(os.path.join(path, "activations"), layer, chunk, 0)


def test_checksums_are_recorded_and_a_clean_store_verifies(tmp_path):
  path, data = _synthetic(tmp_path)
  store = store_lib.ActivationStore.open(path)
  assert store.checksums.shape == (2, 3) and store.checksums.dtype == np.uint32
  np.testing.assert_array_equal(store.read(slice(0, 2), 0, 320).astype(np.float32), data)
  np.testing.assert_array_equal(store.read(1, 100, 300).astype(np.float32), data[1, 100:300])
  assert store_lib.verify_store(path) == []


def test_a_truncated_chunk_names_the_store_the_chunk_and_the_fix(tmp_path):
  path, _ = _synthetic(tmp_path)
  with open(_chunk(path, 1, 1), "r+b") as f:
    f.truncate(100)
  store = store_lib.ActivationStore.open(path)
  store.read(0, 0, 320)  # other layers read fine
  store.read(1, 0, 128)  # and other chunks of the same layer
  with pytest.raises(DamagedStoreError) as e:
    store.read(1, 120, 130)
  message = str(e.value)
  assert path in message and "chunk 1 of layer position 1" in message and "rows 128..256" in message
  assert "100 bytes" in message and "--verify" in message and f"delete {path}" in message
  problems = store_lib.verify_store(path)
  assert len(problems) == 1 and "chunk 1 of layer position 1" in problems[0]


def test_a_flipped_byte_fails_the_checksum_and_a_missing_chunk_is_damage(tmp_path):
  path, _ = _synthetic(tmp_path)
  with open(_chunk(path, 0, 2), "r+b") as f:  # the partial last chunk (stored padded)
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 0x10]))
  os.remove(_chunk(path, 1, 0))
  store = store_lib.ActivationStore.open(path)
  with pytest.raises(DamagedStoreError, match=r"chunk 2 of layer position 0 .*CRC-32"):
    store.read(0, 300, 310)
  with pytest.raises(DamagedStoreError, match=r"chunk 0 of layer position 1 .*missing"):
    store.read(1, 0, 1)
  unchecked = store_lib.ActivationStore.open(path, verify_reads=False)
  unchecked.read(0, 300, 310)  # sizes are right: only the checksum sees a flipped byte
  assert len(store_lib.verify_store(path)) == 2


def test_damaged_checksums_or_token_files_are_found(tmp_path):
  path, _ = _synthetic(tmp_path)
  token_file = store_lib.chunk_file(os.path.join(path, "token_ids"), 0, 0)
  with open(token_file, "r+b") as f:
    f.write(b"\x7f")
  problems = store_lib.verify_store(path)
  assert len(problems) == 1 and "token_ids/c/0/0" in problems[0]
  with open(os.path.join(path, store_lib.CHECKSUMS), "r+b") as f:
    f.seek(-1, os.SEEK_END)
    f.write(b"\x00")
  with pytest.raises(DamagedStoreError, match="checksums.npy is missing or damaged"):
    store_lib.ActivationStore.open(path)
