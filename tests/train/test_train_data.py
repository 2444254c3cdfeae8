"""The trainer's input pipeline (train.data.Pipeline): exactly iterate_batches' batches, on the devices,
without a reused ring slot ever changing a batch still in use, and reader errors surfaced."""

import os

import jax
import numpy as np
import pytest

from ghosttrack_jax.errors import DamagedStoreError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import layer_parallel
from ghosttrack_jax.train import data as train_data
from tests import sae_synthetic as syn


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("store"))
  syn.make_store(path, n_layers=3, n_windows=40, seed=11)  # 640 rows, chunks of 128
  return store_lib.ActivationStore.open(path)


def _plan(**kw):
  args = {
    "n_train_rows": 600,
    "batch_size": 48,
    "window_rows": 128,
    "shuffle_windows": 2,
    "epochs": 3,
    "seed": 4,
  }
  return train_data.DataPlan(**{**args, **kw})


@pytest.mark.parametrize("mode,n_devices,start", [("pmap", 1, 0), ("pmap", 2, 7), ("shard_map", 2, 13)])
def test_the_pipeline_delivers_iterate_batches_on_the_devices(store, mode, n_devices, start):
  """Batches equal the plain definition, also on the device after the ring has moved on: a slot is
  reused only once its step is released (on CPU a put may alias the host memory)."""
  plan = _plan()
  layout = layer_parallel.make_layout(3, mode, devices=jax.devices()[:n_devices])
  sources = [layout.device_sources(d) for d in layout.local_indices]  # 2 devices: [0, 1], [2, 2]
  want = list(train_data.iterate_batches(plan, store, sources, start_step=start))
  pipeline = train_data.Pipeline(
    plan, store, sources, start_step=start, put=layout.put_blocks, depth=2, in_flight=2, read_threads=3
  )
  held = []
  try:
    got = 0
    for batch, (step, blocks) in zip(pipeline, want):
      assert batch.step == step
      for host, ref in zip(batch.host, blocks):
        np.testing.assert_array_equal(host, ref)
      held.append((batch, blocks))
      if len(held) > 2:  # the consumer keeps two steps unfinished, as the loop does
        old, ref = held.pop(0)
        device = np.asarray(layout.get({"x": old.device})["x"])  # [n_padded, B, D], after the ring moved
        np.testing.assert_array_equal(device, np.concatenate(ref))
        pipeline.release(old.ticket)
      got += 1
    assert got == len(want) == plan.total_steps - start
  finally:
    pipeline.close()


def test_a_damaged_chunk_comes_out_of_the_iteration(store, tmp_path):
  path = str(tmp_path / "s")
  syn.make_store(path, n_layers=2, n_windows=40, seed=12)
  with open(store_lib.chunk_file(os.path.join(path, "activations"), 1, 2, 0), "r+b") as f:
    f.truncate(10)
  damaged = store_lib.ActivationStore.open(path)
  pipeline = train_data.Pipeline(_plan(epochs=1), damaged, [[0, 1]])
  try:
    with pytest.raises(DamagedStoreError, match="chunk 2 of layer position 1"):
      for batch in pipeline:
        pipeline.release(batch.ticket)
  finally:
    pipeline.close()
