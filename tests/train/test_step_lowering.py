"""The SAE step a GPU runs, lowered for `cuda` on this CPU-only jaxlib with jax.export (no GPU needed).

The program is the one the trainer builds (train.loop.StepFunctions over a runtime.layer_parallel
layout) at GPT-2-medium shapes on abstract arguments (nothing is allocated): one device, and 24 layers
over 4 devices with shard_map (pmap over several devices is jit(shard_map) inside jax, but its wrapper
cannot be exported). For cuda it must:
  - take the dense path ("auto" backward), with no data-dependent conditional (each one is a
    device->host sync on XLA:GPU; the AuxK variant is chosen on the host);
  - contain no custom calls (the C++ CPU kernels must not leak into it) and no host callbacks;
  - hold no float64 tensor.
Do not compile it: `.lower(lowering_platforms=("cuda",)).compile()` succeeds here and silently builds
a CPU executable.
"""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import pytest

from ghosttrack_jax.runtime import layer_parallel
from ghosttrack_jax.sae import registry
from ghosttrack_jax.train import loop as train_loop
from ghosttrack_jax.train import step as train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s+@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"")
F64 = re.compile(r"tensor<(?:[\d?x]*x)?f64>")
CONDITIONAL = re.compile(r"\bstablehlo\.(case|if|while)\b")


def _config(path: str, arg=None):
  spec = importlib.util.spec_from_file_location("config_under_test", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _lowered(arch: str, platform: str, n_layers: int, n_devices: int, mode: str, batch: int = 4096):
  config = _config("configs/gpt2_medium.py")
  config.sae.arch = arch
  config.sae_training.batch_size = batch
  d_model = 1024
  hyper = train_step.for_platform(registry.from_config(config, d_model), "auto", platform)
  settings = train_step.Settings(7e-5, 1000, 0.0, 100_000, 5_000, 20, 1.0, batch)
  tx = train_step.make_optimizer(hyper, settings)
  layout = layer_parallel.make_layout(n_layers, mode, devices=jax.devices()[:n_devices])
  fns = train_loop.StepFunctions(layout, hyper, settings, tx, "host")
  keys = jax.ShapeDtypeStruct((layout.n_padded, 2), jnp.uint32)
  states = jax.eval_shape(jax.vmap(lambda k: train_step.init_state(k, hyper, tx, 1.0)), keys)
  health = {
    "first_bad": jax.ShapeDtypeStruct((layout.n_padded,), jnp.int32),
    "max_fired_ago": jax.ShapeDtypeStruct((layout.n_padded,), jnp.int32),
  }
  x = jax.ShapeDtypeStruct((layout.n_padded, batch, d_model), jnp.bfloat16)
  lead = (layout.n_devices, layout.per_device) if mode == "pmap" else (layout.n_padded,)

  def device_form(a):
    return jax.ShapeDtypeStruct(lead + a.shape[1:], a.dtype, sharding=layout.sharding)

  carry = jax.tree_util.tree_map(device_form, (states, health))
  names = ("switch",) if fns.choice == "switch" else ("off", "on")
  out = {}
  for name in names:
    exported = jax.export.export(fns[name], platforms=[platform])(carry, device_form(x))
    out[name] = _without_locations(exported.mlir_module())
  return hyper, out


def _without_locations(text: str) -> str:
  """The module without debug locations (they quote Python frames, test names included)."""
  text = "\n".join(line for line in text.splitlines() if not line.startswith("#loc"))
  return re.sub(r"\s*loc\(#loc\d*\)", "", text)


@pytest.mark.parametrize(
  "arch,n_layers,n_devices,mode",
  [
    ("jumprelu", 6, 1, "pmap"),
    ("topk", 6, 1, "pmap"),
    ("jumprelu", 24, 4, "shard_map"),
    ("topk", 24, 4, "shard_map"),
  ],
)
def test_the_cuda_step_is_dense_without_custom_calls_callbacks_or_float64(arch, n_layers, n_devices, mode):
  hyper, modules = _lowered(arch, "cuda", n_layers, n_devices, mode)
  assert hyper.sparse_capacity == 0  # "auto" backward: dense on GPUs
  assert set(modules) == ({"off", "on"} if arch == "topk" else {"switch"})
  for name, text in modules.items():
    targets = {a or b for a, b in CUSTOM_CALL.findall(text)}
    assert not targets, (name, targets)  # no custom calls, hence no host callbacks either
    assert "callback" not in text, name
    assert not F64.findall(text), name
    assert not CONDITIONAL.findall(text), (name, CONDITIONAL.findall(text))  # no per-step host sync
    assert "stablehlo.dot_general" in text  # it is the real step


def test_cpu_keeps_the_sparse_path_and_its_switch():
  """Negative control for the checks above: on CPU "auto" is sparse and the step switches on device."""
  assert train_step.backward_path("auto", "cpu") == "sparse"
  assert train_step.backward_path("dense", "cpu") == "dense"
  assert train_step.backward_path("sparse", "gpu") == "sparse"  # explicit values stay
  hyper, modules = _lowered("jumprelu", "cuda", 6, 1, "pmap")
  assert hyper.sparse_capacity == 0
  config = _config("configs/gpt2_medium.py")
  cpu_hyper = train_step.for_platform(registry.from_config(config, 1024), "auto", "cpu")
  assert cpu_hyper.sparse_capacity == config.sae_training.sparse_capacity > 0
  # The sparse JumpReLU step chooses sparse or dense on the device: a conditional, which the check sees.
  settings = train_step.Settings(7e-5, 1000, 0.0, 100_000, 5_000, 20, 1.0, 128)
  tx = train_step.make_optimizer(cpu_hyper, settings)
  step = jax.jit(train_step.make_block_step(cpu_hyper, settings, tx))
  states = jax.eval_shape(
    jax.vmap(lambda k: train_step.init_state(k, cpu_hyper, tx, 1.0)), jax.ShapeDtypeStruct((2, 2), jnp.uint32)
  )
  text = step.trace(states, jax.ShapeDtypeStruct((2, 128, 1024), jnp.bfloat16)).lower().as_text()
  assert CONDITIONAL.findall(text)
