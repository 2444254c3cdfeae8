"""Architecture recipes: the legacy loss formula, JumpReLU's falling L0, the decoder constraint, AuxK,
the BatchTopK inference threshold, initialisation and schedules."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghosttrack_jax import config_lib
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.sae import common, registry, sparse
from ghosttrack_jax.train import loop as train_loop
from ghosttrack_jax.train import stage as train_stage
from ghosttrack_jax.train import step as train_step
from tests import sae_synthetic as syn


def _train_synthetic(tmp_path, overrides, n_layers=1, d=32, n_true=128):
  store_dir = str(tmp_path / "store")
  syn.make_store(store_dir, n_layers=n_layers, d=d, n_windows=64, n_true=n_true, active=4, seed=5)
  store = store_lib.ActivationStore.open(store_dir)
  config = syn.tiny_config(**overrides)
  result = train_loop.train(
    config,
    store,
    layers=list(range(n_layers)),
    layer_positions=list(range(n_layers)),
    n_train_rows=store.n_rows - 128,
    window_rows=128,
    mean_sq_norms=store.mean_sq_norm(),
    ckpt_dir=str(tmp_path / "ckpt"),
    log_dir=str(tmp_path / "log"),
  )
  with open(tmp_path / "log" / "metrics.jsonl", encoding="utf-8") as f:
    log = [json.loads(line) for line in f]
  return result, log


def test_jumprelu_l0_falls_within_a_few_hundred_steps(tmp_path):
  # Recipe constants in normalised units (eps = theta_0 = 1e-3); a short-run learning rate.
  result, log = _train_synthetic(
    tmp_path,
    {
      "sae.width": 128,
      "sae.bandwidth": 1e-3,
      "sae.threshold_init": 1e-3,
      "sae.l0_coefficient": 0.1,
      "sae.l0_warmup_steps": 50,
      "sae_training.lr": 1e-3,
      "sae_training.epochs": 20,
      "sae_training.log_every": 25,
      "sae_training.checkpoint_every": 1000,
      "sae_training.sparse_capacity": 128,
    },
  )
  assert 200 <= result.steps <= 400
  first, last = log[0], log[-1]
  assert first["mean/l0"] > 40  # about half the 128 latents fire at theta_0
  assert last["mean/l0"] < 0.3 * first["mean/l0"], [r["mean/l0"] for r in log]
  assert last["mean/theta_mean"] > 10 * first["mean/theta_mean"]  # thresholds moved (raw theta)
  assert last["mean/fvu"] < 0.6
  assert np.all(np.asarray(result.state.params["threshold"]) >= 0)


def test_data_dependent_threshold_init_sets_the_starting_l0(tmp_path):
  _, log = _train_synthetic(
    tmp_path,
    {"sae.width": 128, "sae.threshold_init_l0": 8, "sae_training.epochs": 1, "sae_training.log_every": 1},
  )
  assert log[0]["mean/l0"] == pytest.approx(8.0, abs=1.5)  # instead of ~64 with theta_0 = 1e-3
  assert log[0]["mean/sparse_path"] == 1.0


def test_legacy_loss_reproduces_the_original_formula():
  h = registry.build("relu_l1", d_model=5, width=7, l1_coefficient=0.01, legacy_threshold=0.1)
  p = h.init_params(jax.random.PRNGKey(0))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 5)))
  # The original GhostTrack (models/sae_model.py), in numpy: element means, fixed scalar threshold.
  pre = x @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"])
  f = pre * (pre > 0.1)
  x_hat = f @ np.asarray(p["W_dec"]) + np.asarray(p["b_dec"])
  expected = np.mean((x - x_hat) ** 2) + 0.01 * np.mean(np.abs(f))
  got, _ = h.loss(p, jnp.asarray(x), jnp.asarray(pre, jnp.float32), {}, sparse.Dense())
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # PyTorch Linear-style init, untied, unit decoder rows, one untrained threshold.
  assert not np.allclose(p["W_enc"], np.asarray(p["W_dec"]).T)
  np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(p["threshold"]) == np.float32(0.1))
  assert np.max(np.abs(p["W_enc"])) <= 1 / np.sqrt(5) + 1e-6


def test_tied_init_and_unit_decoder_rows():
  h = registry.build("jumprelu", d_model=8, width=32)
  p = h.init_params(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(p["W_enc"], np.asarray(p["W_dec"]).T)
  np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(p["b_enc"]) == 0) and np.all(np.asarray(p["b_dec"]) == 0)
  np.testing.assert_allclose(p["threshold"], 1e-3)


def test_decoder_gradient_projection_and_renormalisation():
  w = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  w = w / jnp.linalg.norm(w, axis=1, keepdims=True)
  g = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  tx = common.project_decoder_grads()
  out, _ = tx.update({"W_dec": g, "b": jnp.ones(3)}, tx.init(None), {"W_dec": w, "b": jnp.ones(3)})
  np.testing.assert_allclose(jnp.sum(out["W_dec"] * w, axis=1), 0.0, atol=1e-6)  # radial part removed
  np.testing.assert_array_equal(out["b"], jnp.ones(3))
  renormed = common.renormalise_decoder({"W_dec": 3.0 * w})
  np.testing.assert_allclose(jnp.linalg.norm(renormed["W_dec"], axis=1), 1.0, rtol=1e-6)


def test_a_training_step_keeps_unit_rows_and_nonnegative_thresholds():
  h = registry.build("jumprelu", d_model=8, width=32, bandwidth=0.05, threshold_init=0.05, sparse_capacity=32)
  s = train_step.Settings(
    lr=0.05,
    warmup_steps=1,
    decay_fraction=0.0,
    total_steps=10,
    steps_per_epoch=10,
    epochs=1,
    grad_clip=1.0,
    batch_size=16,
  )
  tx = train_step.make_optimizer(h, s)
  state = jax.vmap(lambda k: train_step.init_state(k, h, tx, 1.0))(jax.random.split(jax.random.PRNGKey(0), 2))
  step = jax.jit(train_step.make_block_step(h, s, tx))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 8)) * 0.4
  for _ in range(5):
    state, m = step(state, x)
  np.testing.assert_allclose(jnp.linalg.norm(state.params["W_dec"], axis=-1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(state.params["threshold"]) >= 0)
  assert np.all(np.asarray(state.step) == 5)
  assert np.all(np.asarray(state.fired_ago) % 16 == 0)  # counts tokens in whole batches


def test_auxk_reaches_dead_latents_only_when_some_are_dead():
  h = registry.build("topk", d_model=8, width=32, k=2, aux_k=4)
  p = h.init_params(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
  pre = h.preact(p, x)
  dead = jnp.arange(32) >= 24

  def loss(params, use_aux, dead_mask):
    return h.loss(params, x, pre, {"use_aux": use_aux, "dead": dead_mask}, sparse.Dense.top_k(pre, h.k))

  (l_plain, aux_plain), _ = jax.value_and_grad(loss, has_aux=True)(p, False, dead)
  (l_aux, aux), g = jax.value_and_grad(loss, has_aux=True)(p, True, dead)
  assert float(aux["sparsity_loss"]) > 0 and float(aux_plain["sparsity_loss"]) == 0
  np.testing.assert_allclose(float(l_aux) - float(l_plain), float(aux["sparsity_loss"]), rtol=1e-5)
  _, g_plain = jax.value_and_grad(loss, has_aux=True)(p, False, dead)
  diff = np.abs(np.asarray(g["W_enc"]) - np.asarray(g_plain["W_enc"])).sum(axis=0)
  assert np.all(diff[:24] < 1e-7) and np.any(diff[24:] > 0)  # AuxK gradient only on dead latents
  (_, aux_none), _ = jax.value_and_grad(loss, has_aux=True)(p, True, jnp.zeros(32, bool))
  assert float(aux_none["sparsity_loss"]) == 0.0


def test_batchtopk_inference_threshold(tmp_path):
  result, log = _train_synthetic(
    tmp_path,
    {
      "sae.arch": "batchtopk",
      "sae.k": 4,
      "sae.batchtopk_threshold_start": 20,
      "sae_training.epochs": 6,
      "sae_training.checkpoint_every": 1000,
    },
  )
  assert log[0]["mean/batch_threshold"] == -1.0  # not seeded before the start step
  theta = float(np.asarray(result.state.batch_threshold)[0])
  assert theta > 0
  final = train_stage.finalize_params(
    registry.from_config(syn.tiny_config(**{"sae.arch": "batchtopk"}), 32), result.state
  )
  assert np.all(final.params["threshold"] == np.float32(theta))
  assert all(r["mean/l0"] == pytest.approx(4.0, abs=0.5) for r in log)  # mean L0 = k in training


def test_lr_schedules():
  s = train_step.Settings(
    lr=1.0,
    warmup_steps=10,
    decay_fraction=0.2,
    total_steps=100,
    steps_per_epoch=25,
    epochs=4,
    grad_clip=1.0,
    batch_size=8,
  )
  sched = train_step.lr_schedule(registry.build("jumprelu", d_model=4, width=8), s)
  vals = [float(sched(jnp.asarray(t))) for t in (0, 5, 10, 50, 80, 90, 100)]
  np.testing.assert_allclose(vals, [0.1, 0.55, 1.0, 1.0, 1.0, 0.5, 0.0], atol=1e-6)
  legacy = train_step.lr_schedule(registry.build("relu_l1", d_model=4, width=8), s)
  vals = [float(legacy(jnp.asarray(t))) for t in (0, 24, 25, 50, 99)]
  np.testing.assert_allclose(
    vals, [1.0, 1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))], atol=1e-6
  )
  config = syn.tiny_config(**{"sae.arch": "topk", "sae.width": 2**16})
  assert train_step.peak_lr(config, registry.from_config(config, 8)) == pytest.approx(1e-4)


def test_topk_b_dec_and_encode():
  h = registry.build("topk", d_model=6, width=20, k=3)
  p = h.init_params(jax.random.PRNGKey(0))
  pre = jax.random.normal(jax.random.PRNGKey(2), (5, 20))
  f = h.encode(p, pre)
  assert np.all(np.sum(np.asarray(f) != 0, axis=1) <= 3)
  top = np.sort(np.asarray(pre), axis=1)[:, -3:]
  np.testing.assert_allclose(np.sort(np.asarray(f), axis=1)[:, -3:], np.maximum(top, 0), rtol=1e-6)


def test_encoder_init_scale_shrinks_the_tied_encoder():
  h = registry.build("topk", d_model=8, width=32, encoder_init_scale=0.1)
  p = h.init_params(jax.random.PRNGKey(0))
  np.testing.assert_allclose(p["W_enc"], 0.1 * np.asarray(p["W_dec"]).T, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-5)


def test_outlier_rows_are_down_weighted_in_the_loss():
  x = np.ones((8, 4), np.float32)
  x[3] *= 40.0  # norm 40x the median
  off = registry.build("topk", d_model=4, width=16, k=2)
  on = registry.build("topk", d_model=4, width=16, k=2, outlier_norm_ratio=10.0)
  assert common.row_weights(off, jnp.asarray(x)) is None
  w = np.asarray(common.row_weights(on, jnp.asarray(x)))
  np.testing.assert_allclose(w, [1, 1, 1, (10 / 40) ** 2, 1, 1, 1, 1], rtol=1e-6)
  # TopK: the weighted FVU, with the weighted mean in its denominator; the logged fvu stays unweighted
  rng = np.random.default_rng(0)
  xr = jnp.asarray(rng.standard_normal((8, 4)).astype(np.float32) + x)
  p = on.init_params(jax.random.PRNGKey(0))
  pre = on.preact(p, xr)
  ctx = {"dead": jnp.zeros(16, bool), "use_aux": False}
  loss_on, aux_on = on.loss(p, xr, pre, ctx, sparse.Dense.top_k(pre, on.k))
  loss_off, aux_off = off.loss(p, xr, pre, ctx, sparse.Dense.top_k(pre, off.k))
  f = on.encode(p, pre)
  err = np.asarray(xr - on.decode(p, f))
  wv = np.asarray(common.row_weights(on, xr))
  mean_w = (wv[:, None] * np.asarray(xr)).sum(0) / wv.sum()
  want = (wv * (err**2).sum(1)).sum() / (wv * ((np.asarray(xr) - mean_w) ** 2).sum(1)).sum()
  np.testing.assert_allclose(loss_on, want, rtol=1e-5)
  np.testing.assert_allclose(aux_on["fvu"], aux_off["fvu"], rtol=1e-6)
  np.testing.assert_allclose(loss_off, aux_off["fvu"], rtol=1e-6)


def test_config_rejects_outlier_ratios_below_one_and_for_the_legacy_mode():
  c = syn.tiny_config(**{"sae.outlier_norm_ratio": 0.5})
  assert any("outlier_norm_ratio=0.5" in p for p in config_lib.problems(c, stages=()))
  c = syn.tiny_config(
    **{"sae.arch": "relu_l1", "sae.outlier_norm_ratio": 10.0, "sae.encoder_init_scale": 0.1}
  )
  found = config_lib.problems(c, stages=())
  assert any("outlier_norm_ratio must be 0" in p for p in found)
  assert any("encoder_init_scale must be 1" in p for p in found)
  assert not config_lib.problems(syn.tiny_config(**{"sae.outlier_norm_ratio": 10.0}), stages=())
