"""The per-layer SAE quality table: FVU and cosine with and without the outlier rows (massive-activation
tokens), the same figures from a store and from arrays, metrics.md's header against its rows, and the
report's SAE table reading the new columns."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.report import gather, render
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.sae import registry
from ghosttrack_jax.train import quality
from tests import sae_synthetic as syn


def _fvu(x, x_hat):
  return ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def test_fidelity_leaves_out_rows_above_ten_times_the_median_norm():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 8)).astype(np.float32)
  x[7] *= 300.0  # a massive-activation row
  x_hat = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
  x_hat[7] = x[7]  # reconstructed exactly: it would hide the error of every other row in the plain FVU
  active = rng.random((200, 32)) < 0.1
  active[:, 0] = False  # one latent never fires
  row = quality.fidelity(x, x_hat, active)
  keep = np.arange(200) != 7
  assert row["outlier_rows"] == 1
  np.testing.assert_allclose(row["fvu"], _fvu(x, x_hat), rtol=1e-4)
  np.testing.assert_allclose(row["fvu_robust"], _fvu(x[keep], x_hat[keep]), rtol=1e-4)
  assert row["fvu"] < 0.01 < 0.05 < row["fvu_robust"]
  cos = (x * x_hat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
  np.testing.assert_allclose(row["cosine"], cos.mean(), rtol=1e-5)
  np.testing.assert_allclose(row["cosine_robust"], cos[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(row["l0"], active.sum(1).mean(), rtol=1e-6)
  np.testing.assert_allclose(row["never_fired_eval"], np.mean(active.sum(0) == 0))


def test_reconstruction_metrics_from_the_store_equal_fidelity_on_the_same_rows(tmp_path):
  data = syn.make_store(str(tmp_path / "store"), n_layers=2, n_windows=24, seed=3)
  store = store_lib.ActivationStore.open(str(tmp_path / "store"))
  h = registry.build("topk", d_model=store.d_model, width=64, k=4)
  params = jax.vmap(h.init_params)(jax.random.split(jax.random.PRNGKey(0), 2))
  folded = {k: np.asarray(v) for k, v in params.items()}
  rows, _ = quality.reconstruction_metrics(h, folded, store, [0, 1], 40, 300, chunk=128)
  for i in range(2):
    x = np.asarray(store.read(i, 40, 340), np.float32)
    f, x_hat = h.encode_decode({k: jnp.asarray(v[i]) for k, v in folded.items()}, jnp.asarray(x))
    want = quality.fidelity(x, np.asarray(x_hat), np.asarray(f) > 0)
    for key in ("fvu", "fvu_robust", "outlier_rows", "cosine", "l0", "never_fired_eval"):
      np.testing.assert_allclose(rows[i][key], want[key], rtol=1e-4, err_msg=key)
  assert data.shape[0] == 2


def _rows():
  return [
    {
      "layer": layer,
      "l0": 30.0,
      "l0_std": 3.0,
      "fvu": 0.05,
      "fvu_robust": 0.2 + 0.1 * layer,
      "outlier_rows": layer,
      "cosine": 0.9,
      "dead_fraction": 0.0,
      "silent_last_epoch": 0.0,
      "never_fired_eval": 0.01,
      "dense_latents": 0,
      "theta_mean": 0.0,
    }
    for layer in range(2)
  ]


def test_metrics_md_header_matches_its_rows_and_judges_the_robust_fvu(tmp_path):
  report = quality.Report(rows=_rows(), log_density=np.zeros((2, 4)), histograms={}, notes=["n"])
  quality.write_tables(str(tmp_path), report, meta={"model": "m", "arch": "topk", "width": 64})
  lines = open(os.path.join(tmp_path, quality.METRICS_MD), encoding="utf-8").read().splitlines()
  table = [ln for ln in lines if ln.startswith("|")]
  header = [c.strip() for c in table[0].strip("|").split("|")]
  assert header[:6] == ["layer", "l0", "l0_std", "fvu", "fvu_robust", "outlier_rows"]
  assert "cosine" in header and header[-1] == "theta_mean"
  for ln in table[2:]:
    assert len(ln.strip("|").split("|")) == len(header), ln
  assert "| 0.300* |" in table[3] and "| 0.200 |" in table[2]  # layer 1 misses FVU <= 0.25 without outliers
  metrics = atomic_io.read_json(os.path.join(tmp_path, quality.METRICS_JSON))
  assert metrics["targets"]["fvu_robust"] == 0.25 and "fvu" not in metrics["layers"][0]["meets_targets"]
  assert (
    metrics["summary"]["fvu_robust"]["max"] == pytest.approx(0.3)
    and metrics["summary"]["outlier_rows"]["max"] == 1
  )


def test_the_report_sae_table_shows_the_robust_fvu(tmp_path):
  config = syn.tiny_config()
  directory = paths.for_config(config, str(tmp_path)).sae_results
  report = quality.Report(rows=_rows(), log_density=np.zeros((2, 4)), histograms={}, notes=[])
  quality.write_tables(directory, report, meta={"model": "synthetic"})
  atomic_io.write_done(directory)
  sq = gather.read_sae_quality(config, str(tmp_path))
  assert (
    sq["columns"][:5] == ["layer", "l0", "fvu", "fvu_robust", "outlier_rows"] and "cosine" in sq["columns"]
  )
  cols, cells = render._sae_table(sq)
  assert cells[1][cols.index("outlier_rows")] == 1
