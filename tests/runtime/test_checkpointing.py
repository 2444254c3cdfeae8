"""Orbax checkpoints of the trainer: a damaged checkpoint is an error naming the step and the fix, never
silently restored (Orbax itself restores a flipped byte of a data file as a wrong value)."""

import os

import numpy as np
import pytest

from ghosttrack_jax.errors import DamagedStoreError
from ghosttrack_jax.runtime import checkpointing


def _state(seed):
  rng = np.random.default_rng(seed)
  return {
    "params": {"W": rng.normal(size=(3, 64, 32)).astype(np.float32)},
    "step": np.arange(3, dtype=np.int32),
  }


def _save(directory, steps=(10, 20)):
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=5)
  for s in steps:
    ckpt.save(s, _state(s), {"step": s})
  ckpt.close()


def _largest_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def test_round_trip_records_checksums(tmp_path):
  _save(str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  state, record = ckpt.restore(20, _state(0))
  np.testing.assert_array_equal(state["params"]["W"], _state(20)["params"]["W"])
  assert set(record[checkpointing.CRC_KEY]) == {"params/W", "step"}
  assert ckpt.verify(10) == [] and ckpt.verify(20) == []
  ckpt.close()


def test_a_flipped_byte_is_an_error_naming_the_step_and_the_fallback(tmp_path):
  _save(str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  big = _largest_file(ckpt.step_dir(20))
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x01]))
  with pytest.raises(DamagedStoreError) as e:
    ckpt.restore(20, _state(0))
  message = str(e.value)
  assert "step 20" in message and str(tmp_path) in message
  assert f"delete {ckpt.step_dir(20)} to resume from step 10" in message
  assert len(ckpt.verify(20)) == 1 and ckpt.verify(10) == []
  ckpt.close()


def test_a_truncated_file_is_an_error(tmp_path):
  _save(str(tmp_path), steps=(10,))
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  big = _largest_file(ckpt.step_dir(10))
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)
  with pytest.raises(DamagedStoreError, match=r"step 10 .* damaged: Orbax cannot read it") as e:
    ckpt.restore(10, _state(0))
  assert f"delete {tmp_path} to train from the start" in str(e.value)
  assert ckpt.verify(10)
  ckpt.close()
