"""Layer shards over 4 simulated CPU devices: pmap and shard_map give identical parameters, equal to
training each layer alone; padding and the divisibility error."""

import jax
import numpy as np
import pytest

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import layer_parallel
from ghosttrack_jax.train import loop as train_loop
from tests import sae_synthetic as syn

N_LAYERS = 6  # 6 layers on 4 devices: 2 per device, 2 padding slots


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("store"))
  syn.make_store(path, n_layers=N_LAYERS, n_windows=24, seed=1)
  return store_lib.ActivationStore.open(path)


def _train(store, tmp, config, layers, devices=None):
  return train_loop.train(
    config,
    store,
    layers=layers,
    layer_positions=layers,
    n_train_rows=store.n_rows - 64,
    window_rows=128,
    mean_sq_norms=store.mean_sq_norm()[layers],
    ckpt_dir=str(tmp / "ckpt"),
    log_dir=str(tmp / "log"),
    devices=devices,
  )


def _params(result):
  return {k: np.asarray(v) for k, v in result.state.params.items()}


def test_four_devices_are_simulated():
  assert jax.device_count() == 4, "tests/conftest.py must set XLA_FLAGS before JAX starts"


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_pmap_and_shard_map_identical_and_equal_to_each_layer_alone(store, tmp_path, arch):
  config = syn.tiny_config(
    **{"sae.arch": arch, "sae.k": 8, "sae_training.epochs": 2, "sae_training.sparse_capacity": 64}
  )
  layers = list(range(N_LAYERS))
  config.sae_training.parallel = "pmap"
  by_pmap = _train(store, tmp_path / "pmap", config, layers)
  config.sae_training.parallel = "shard_map"
  by_shard_map = _train(store, tmp_path / "shard_map", config, layers)
  assert by_pmap.layout.startswith("pmap x4 (2 layers/device, 2 padding)")
  assert by_shard_map.layout.startswith("shard_map x4")
  p1, p2 = _params(by_pmap), _params(by_shard_map)
  for name in p1:
    np.testing.assert_array_equal(p1[name], p2[name], err_msg=name)
  np.testing.assert_array_equal(by_pmap.state.fired_ago, by_shard_map.state.fired_ago)
  # Each layer alone, on one device, from the same init key and data: the same parameters. The
  # stacked program batches the matmuls over layers, which XLA may sum in another order, hence the
  # (tight) tolerance rather than bit equality.
  config.sae_training.parallel = "pmap"
  for layer in (0, 5):
    alone = _train(store, tmp_path / f"alone{layer}", config, [layer], devices=jax.devices()[:1])
    pa = _params(alone)
    assert alone.steps == by_pmap.steps
    for name in p1:
      np.testing.assert_allclose(
        pa[name][0], p1[name][layer], rtol=1e-5, atol=1e-6, err_msg=f"layer {layer} {name}"
      )


def test_layout_padding_and_divisibility_error():
  devices = jax.devices()
  lay = layer_parallel.make_layout(6, "pmap", devices=devices)
  assert (lay.per_device, lay.n_padded) == (2, 8)
  assert list(lay.valid) == [True] * 6 + [False] * 2
  assert lay.device_sources(3) == [5, 5]  # padding slots read (and clone) the last layer
  assert layer_parallel.make_layout(3, "pmap", devices=devices).n_devices == 3  # never idle devices
  with pytest.raises(ConfigError, match=r"devices=3 \(a divisor of 6\).*pad_layers=True"):
    layer_parallel.make_layout(6, "shard_map", pad=False, devices=devices)
  with pytest.raises(ConfigError, match="parallel"):
    layer_parallel.make_layout(6, "vmap")


def test_put_and_get_round_trip():
  devices = jax.devices()
  tree = {"a": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "b": np.arange(8, dtype=np.int32)}
  for mode in layer_parallel.MODES:
    lay = layer_parallel.make_layout(7, mode, devices=devices)
    back = lay.get(lay.put(tree))
    for k in tree:
      np.testing.assert_array_equal(back[k], tree[k])
