"""The `train` stage end to end on a synthetic store: outputs, metrics files, idempotence, the
TrainedSAEs contract of docs/DESIGN.md, and the data reader."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ghosttrack_jax.errors import IncompleteStoreError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, paths, writer
from ghosttrack_jax.sae import export, registry
from ghosttrack_jax.sae import trained as trained_lib
from ghosttrack_jax.train import data as train_data
from ghosttrack_jax.train import stage as train_stage
from tests import sae_synthetic as syn


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stage"))
  mp = paths.ModelPaths(workdir, "synthetic")
  data = syn.make_store(mp.hidden_states, n_layers=2, n_windows=48, seed=6)
  # The offline default's JumpReLU settings: b_dec subtracted from the input, data-set thresholds.
  config = syn.tiny_config(
    **{"sae_training.epochs": 3, "sae.b_dec_to_input": True, "sae.threshold_init_l0": 12}
  )
  train_stage.run(config, workdir)
  return config, workdir, mp, data


def test_outputs_and_tables(trained):
  _, _, mp, _ = trained
  assert atomic_io.is_done(mp.sae_results) and atomic_io.is_done(mp.sae_export)
  metrics = atomic_io.read_json(os.path.join(mp.sae_results, "metrics.json"))
  assert [r["layer"] for r in metrics["layers"]] == [0, 1]
  for row in metrics["layers"]:
    for key in (
      "l0",
      "l0_std",
      "fvu",
      "fvu_robust",
      "outlier_rows",
      "explained_variance",
      "cosine",
      "rel_recon_bias",
      "dead_fraction",
      "never_fired_eval",
      "dense_latents",
      "eval_tokens",
      "theta_mean",
      "meets_targets",
    ):
      assert key in row, key
    assert 0 < row["l0"] < 64 and np.isfinite(row["fvu"])  # 30 steps: far from converged
  assert any("dead window" in n for n in metrics["notes"])
  md = open(os.path.join(mp.sae_results, "metrics.md"), encoding="utf-8").read()
  assert "| layer | l0 |" in md
  for row in metrics["layers"]:  # a missed target is marked in the table
    assert isinstance(row["meets_targets"]["fvu_robust"], bool)
    mark = "*" if not row["meets_targets"]["l0"] else ""
    assert f"| {row['layer']} | {row['l0']:.1f}{mark} |" in md
  hist = atomic_io.read_json(os.path.join(mp.sae_results, "density_histograms.json"))
  assert len(hist["bins_log10"]) == 41 and sum(hist["counts"]["0"]) == 64
  log_dir = os.path.join(mp.sae_results, "train_log")
  lines = writer.read_jsonl(os.path.join(log_dir, "metrics.jsonl"))
  assert "layer_01/l0" in lines[-2] and lines[-2]["step"] == metrics["steps"]
  train_lines = [ln for ln in lines if "mean/fvu" in ln]
  assert train_lines[-1]["mean/fvu"] < 0.6 * train_lines[0]["mean/fvu"]  # it learns
  assert "eval/layer_01/fvu" in lines[-1] and lines[-1]["step"] == metrics["steps"]
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(log_dir))
  for layer in (0, 1):
    assert os.path.exists(os.path.join(export.layer_dir(mp.sae_export, layer), "sparsity.safetensors"))
  done = atomic_io.read_json(os.path.join(mp.sae_results, "DONE"))
  assert done["sae_manifest_hash"] == train_stage.manifest_hash(mp.sae_export, [0, 1])


def test_rerun_is_skipped(trained):
  config, workdir, mp, _ = trained
  before = os.path.getmtime(os.path.join(mp.sae_results, "metrics.json"))
  train_stage.run(config, workdir)
  assert os.path.getmtime(os.path.join(mp.sae_results, "metrics.json")) == before


def test_trained_saes_contract(trained):
  config, workdir, mp, data = trained
  saes = trained_lib.load_trained_saes(config, workdir)
  assert saes.arch == "jumprelu" and saes.layers == [0, 1] and saes.architecture.applies_b_dec_to_input
  assert saes.params["W_enc"].shape == (2, 16, 64) and saes.params["W_dec"].shape == (2, 64, 16)
  assert saes.params["threshold"].shape == (2, 64) and saes.input_scale.shape == (2,)
  store = store_lib.ActivationStore.open(mp.hidden_states)
  np.testing.assert_allclose(saes.input_scale, 1 / np.sqrt(store.mean_sq_norm()), rtol=1e-6)
  x_raw = data[:, -40:]  # held-out rows, raw units
  codes = np.asarray(saes.encode(x_raw))
  x_hat = np.asarray(saes.decode(codes))
  assert codes.shape == (2, 40, 64) and x_hat.shape == (2, 40, 16)
  hyper = registry.from_config(config, 16)
  for i in range(2):  # codes are the training-unit codes of s * x; decode is in raw units
    p = {k: jnp.asarray(v[i]) for k, v in saes.params.items()}
    s = float(saes.input_scale[i])
    p_train = {
      "W_enc": p["W_enc"] / s,
      "b_enc": p["b_enc"],
      "W_dec": p["W_dec"] * s,
      "b_dec": p["b_dec"] * s,
      "threshold": p["threshold"],
    }
    ref = hyper.encode(p_train, hyper.preact(p_train, s * jnp.asarray(x_raw[i])))
    np.testing.assert_allclose(codes[i], ref, rtol=1e-4, atol=1e-5)
    ref_hat = hyper.decode(p_train, ref) / s
    np.testing.assert_allclose(x_hat[i], ref_hat, rtol=1e-4, atol=1e-4)
  one = saes.subset([1])
  assert one.layers == [1] and one.apply_b_dec_to_input
  np.testing.assert_allclose(np.asarray(one.encode(x_raw[1:])), codes[1:], rtol=1e-6, atol=1e-6)


def test_missing_outputs_raise(tmp_path):
  config = syn.tiny_config()
  with pytest.raises(IncompleteStoreError, match="run --stages=train"):
    trained_lib.load_trained_saes(config, str(tmp_path))
  with pytest.raises(IncompleteStoreError, match="extract"):
    train_stage.run(config, str(tmp_path))


def test_data_order_is_deterministic_and_per_device(tmp_path):
  data = syn.make_store(str(tmp_path / "s"), n_layers=3, n_windows=20, seed=7)
  store = store_lib.ActivationStore.open(str(tmp_path / "s"))
  plan = train_data.DataPlan(
    n_train_rows=300, batch_size=32, window_rows=64, shuffle_windows=2, epochs=2, seed=3
  )
  sources = [[0, 1], [2, 2]]  # device 1 holds layer 2 and a padding clone of it
  batches = list(train_data.iterate_batches(plan, store, sources))
  assert [s for s, _ in batches] == list(range(plan.total_steps))
  seen = np.concatenate([b[0][0] for _, b in batches[: plan.total_steps // 2]])
  assert len(seen) == len({tuple(r) for r in seen})  # no row twice within an epoch
  for step, blocks in batches[:3]:
    assert blocks[0].shape == (2, 32, 16) and blocks[1].shape == (2, 32, 16)
    np.testing.assert_array_equal(blocks[1][0], blocks[1][1])
    rows = [np.nonzero((data[0] == r.astype(np.float32)).all(1))[0][0] for r in blocks[0][0]]
    np.testing.assert_array_equal(blocks[0][1].astype(np.float32), data[1][rows])
    np.testing.assert_array_equal(blocks[1][0].astype(np.float32), data[2][rows])
    assert max(rows) < 300
  resumed = list(train_data.iterate_batches(plan, store, sources, start_step=5))
  for (s1, b1), (s2, b2) in zip(batches[5:], resumed):
    assert s1 == s2 and all(np.array_equal(x, y) for x, y in zip(b1, b2))
  pipeline = train_data.Pipeline(plan, store, sources, start_step=5)  # what the trainer uses
  try:
    for batch, (s2, b2) in zip(pipeline, resumed):
      assert batch.step == s2 and all(np.array_equal(x, y) for x, y in zip(batch.host, b2))
      pipeline.release(batch.ticket)
  finally:
    pipeline.close()
  assert plan.position(5)["step"] == 5 and json.dumps(plan.position(5))
  capped = train_data.DataPlan(
    n_train_rows=300, batch_size=32, window_rows=64, shuffle_windows=2, epochs=1, rows_per_epoch=100, seed=3
  )
  assert capped.total_steps == sum(sum(b - a for a, b in w) // 32 for w in capped.epoch_buffers(0)) <= 3
