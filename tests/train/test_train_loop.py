"""The host loop of the SAE trainer: no host<->device transfer between its fetches, and the host-chosen
step variants (what GPUs run) equal the on-device switch (what CPUs run).

On CPU `jax.transfer_guard` sees host->device copies only (CPU arrays are host memory, so device->host
reads are invisible to it); a spy on `ArrayImpl._value`, the property every device->host read goes
through (np.asarray, float, bool, device_get), records the main thread's reads while the loop's guard
is "disallow", outside the loop's one explicit fetch (`LayerLayout.get`).
"""

import contextlib
import threading
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as jax_array  # the spy needs the internal Array class
from jax._src import config as jax_config

from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import layer_parallel
from ghosttrack_jax.train import loop as train_loop
from tests import sae_synthetic as syn


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("store"))
  syn.make_store(path, n_layers=3, n_windows=32, seed=5)
  return store_lib.ActivationStore.open(path)


class ReadSpy:
  """Device->host reads of the main thread under a "disallow" guard, outside LayerLayout.get."""

  def __init__(self):
    self.violations: list[str] = []
    self.fetches = 0
    self._inside_get = threading.local()

  @contextlib.contextmanager
  def installed(self, monkeypatch):
    value = jax_array.ArrayImpl._value
    get = layer_parallel.LayerLayout.get
    spy = self

    def spied_value(array):
      guarded = jax_config.transfer_guard_device_to_host.value == "disallow"
      if (
        guarded
        and threading.current_thread() is threading.main_thread()
        and not getattr(spy._inside_get, "on", False)
      ):
        spy.violations.append("".join(traceback.format_stack(limit=8)))
      return value.fget(array)

    def spied_get(layout, tree):
      spy._inside_get.on = True
      spy.fetches += 1
      try:
        return get(layout, tree)
      finally:
        spy._inside_get.on = False

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(spied_value))
    monkeypatch.setattr(layer_parallel.LayerLayout, "get", spied_get)
    yield self


def test_the_spy_sees_an_implicit_read(monkeypatch):
  """Negative control: an implicit read under the guard is recorded, an explicit fetch is not."""
  x = jnp.arange(4.0) + 1
  first = x[0]
  lay = layer_parallel.make_layout(1, "pmap", devices=jax.devices()[:1])
  with ReadSpy().installed(monkeypatch) as spy:
    with jax.transfer_guard("disallow"):
      lay.get({"a": x[None, None]})
      assert not spy.violations
      float(first)
    assert len(spy.violations) == 1
    with pytest.raises(Exception, match="host-to-device"):
      with jax.transfer_guard("disallow"):
        jnp.asarray(np.ones(3)) + 1  # an implicit host->device copy


def _train(store, tmp, config, devices, variant_choice=None):
  return train_loop.train(
    config,
    store,
    layers=[0, 1, 2],
    layer_positions=[0, 1, 2],
    n_train_rows=store.n_rows - 64,
    window_rows=128,
    mean_sq_norms=store.mean_sq_norm(),
    ckpt_dir=str(tmp / "ckpt"),
    log_dir=str(tmp / "log"),
    devices=devices,
    variant_choice=variant_choice,
  )


@pytest.mark.parametrize("mode,n_devices", [("pmap", 1), ("pmap", 3), ("shard_map", 3)])
def test_no_transfer_between_fetches(store, tmp_path, monkeypatch, mode, n_devices):
  overrides = {
    "sae_training.parallel": mode,
    "sae_training.epochs": 6,
    "sae_training.log_every": 5,
    "sae_training.checkpoint_every": 1000,
    "sae_training.transfer_guard": "disallow",
  }
  config = syn.tiny_config(**overrides)
  plan = train_loop.data_plan(config, store.n_rows - 64, 128)
  total = plan.total_steps
  assert total > 3 * 5, "too few steps to see fetch intervals"
  with ReadSpy().installed(monkeypatch) as spy:
    result = _train(store, tmp_path, config, jax.devices()[:n_devices])
  assert not spy.violations, spy.violations[0]
  # Fetches: step 1, every 5th step, the last step (a log and a checkpoint save: 2 fetches there),
  # and the final state.
  fetch_steps = {1, total} | set(range(5, total + 1, 5))
  assert spy.fetches == len(fetch_steps) + 2, (spy.fetches, sorted(fetch_steps))
  assert result.steps == total
  assert all(np.all(np.isfinite(v)) for v in result.state.params.values())


def test_host_chosen_aux_variant_equals_the_device_switch(store, tmp_path, monkeypatch):
  """TopK with AuxK: dead latents appear mid-run (a short dead window); choosing the AuxK variant on
  the host at each fetch gives the parameters of the per-step lax.switch, up to float rounding (a
  program without the conditional is compiled differently, even for the same variant). A host that
  ignored the dead latents would not."""
  config = syn.tiny_config(
    **{
      "sae.arch": "topk",
      "sae.k": 2,
      "sae.width": 256,
      "sae.dead_tokens": 64 * 12,  # dead after 12 silent steps of 64 tokens
      "sae_training.epochs": 3,
      "sae_training.log_every": 5,
      "sae_training.backward": "dense",
    }
  )
  devices = jax.devices()[:1]
  by_switch = _train(store, tmp_path / "switch", config, devices, variant_choice="switch")
  picks = []
  pick = train_loop.StepFunctions.pick

  def recorded(self, *args):
    picks.append(pick(self, *args))
    return picks[-1]

  monkeypatch.setattr(train_loop.StepFunctions, "pick", recorded)
  by_host = _train(store, tmp_path / "host", config, devices, variant_choice="host")
  assert picks[0] == "off" and "on" in picks, picks  # both variants ran
  for name, value in by_switch.state.params.items():
    np.testing.assert_allclose(by_host.state.params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_array_equal(by_host.state.fired_ago, by_switch.state.fired_ago)
  monkeypatch.setattr(train_loop.train_step, "aux_variant_for", lambda *a: "off")  # never AuxK
  without_aux = _train(store, tmp_path / "off", config, devices, variant_choice="host")
  gap = np.max(np.abs(without_aux.state.params["W_dec"] - by_switch.state.params["W_dec"]))
  assert gap > 1e-3, gap
