"""Metric tests: the §3.7 worked example, every metric family on hand-built tracks with known answers,
the exact relations of §4, the reconstruction family and the degeneracy report."""

import numpy as np
import pytest
from test_tracker import synthetic, worked_example  # this folder is on sys.path under pytest

from ghosttrack_jax.track import divergence as D
from ghosttrack_jax.track import tracker as T

WORKED_EXAMPLE_METRICS = [
  0.332264,
  0.996792,
  0.469892,
  0,
  3,
  2,
  1,
  0.666667,
  0.833333,
  0.333333,
  1.333333,
  2,
  0.471405,
  1,
  0,
  0.997506,
  0.997506,
  0,
  0.844444,
  0.533333,
  1,
  0,
  1.333333,
  2,
  0.471405,
  2,
]


def build(n_layers, tracks, max_concurrent=None):
  """Tracks from (birth, activations, died) tuples: observations at birth .. birth+len-1; a track
  that died has death = its last observed layer. Returns metric inputs for a batch of one."""
  m = max(len(tracks), 1)
  birth = np.full((1, m), -1, np.int32)
  death = np.full((1, m), -1, np.int32)
  act = np.zeros((1, m, n_layers))
  fid = np.full((1, m, n_layers), -1, np.int32)
  for i, (b, acts, died) in enumerate(tracks):
    birth[0, i] = b
    act[0, i, b : b + len(acts)] = acts
    fid[0, i, b : b + len(acts)] = i
    if died:
      death[0, i] = b + len(acts) - 1
    else:
      assert b + len(acts) == n_layers, "an undead track is observed up to L-1"
  alive = D.alive_mask(birth, death, n_layers)
  mc = alive.sum(1).max(-1) if max_concurrent is None else np.array([max_concurrent])
  return birth, death, act, fid, mc


def metric(inputs, name):
  return D.metrics(*inputs)[0, D.METRIC_NAMES.index(name)]


def test_schema_is_pinned():
  assert len(D.METRIC_NAMES) == 26 and len(set(D.METRIC_NAMES)) == 26
  assert D.METRIC_NAMES[:6] == (
    "entropy_mean",
    "entropy_max",
    "entropy_std",
    "entropy_final",
    "total_births",
    "total_deaths",
  )
  assert D.METRIC_NAMES[-1] == "max_concurrent_tracks"
  assert sum(len(v) for v in D.FAMILIES.values()) == 26
  assert len(D.RECONSTRUCTION_NAMES) == 8


def test_worked_example_26_numbers():
  pooled, w = worked_example()
  _, tr = T.track_pooled(pooled, T.unit_decoder(w), T.TrackerConfig.from_config())
  np.testing.assert_allclose(D.track_metrics(tr)[0], WORKED_EXAMPLE_METRICS, atol=1e-6)


def test_entropy_family():
  # L = 3. Layer 0: four equal tracks (2 bits); layer 1: two tracks 3:1; layer 2: nothing alive.
  x = build(3, [(0, [1, 3], True), (0, [1, 1], True), (0, [1], True), (0, [1], True)])
  h1 = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
  hs = np.array([2.0, h1, 0.0])
  got = D.metrics(*x)[0, :4]
  np.testing.assert_allclose(got, [hs.mean(), 2.0, hs.std(), 0.0])
  # zero-valued observations contribute nothing; an all-zero layer has H = 0
  x = build(2, [(0, [0.0, 2.0], False), (0, [0.0, 0.0], False)])
  np.testing.assert_allclose(D.metrics(*x)[0, :4], [0, 0, 0, 0], atol=0)


def test_churn_family():
  x = build(4, [(0, [1, 1, 1, 1], False), (1, [1], True), (2, [1], True), (3, [1], False)])
  got = dict(zip(D.METRIC_NAMES, D.metrics(*x)[0]))
  assert got["total_births"] == 4 and got["total_deaths"] == 2
  assert got["birth_rate"] == 1.0 and got["death_rate"] == 0.5
  assert got["churn_ratio"] == 6 / 8 and got["survival_rate"] == 0.5
  empty = build(4, [])
  assert metric(empty, "survival_rate") == 0 and metric(empty, "total_births") == 0


def test_competition_family():
  # activations at the 0.5 boundary do not compete (strict >); C = [3, 1, 0]
  x = build(3, [(0, [0.6, 0.5, 2], False), (0, [0.7, 0.9, 0.1], False), (0, [0.8], True)])
  got = dict(zip(D.METRIC_NAMES, D.metrics(*x)[0]))
  c = np.array([3, 1, 1])
  assert got["competition_mean"] == pytest.approx(c.mean())
  assert got["competition_max"] == 3 and got["competition_final"] == 1
  assert got["competition_std"] == pytest.approx(c.std())
  assert got["high_competition_ratio"] == pytest.approx(1 / 3)  # C > 2 strictly: only layer 0
  x = build(2, [(0, [1, 1], False), (0, [1, 1], False)])  # C = 2 is not high competition
  assert metric(x, "high_competition_ratio") == 0


def test_stability_family():
  # variances: [1, 3] -> 1 (s = 0.5, not unstable: strict <); [0, 4] -> 4 (s = 0.2, unstable);
  # single-observation tracks are excluded.
  x = build(2, [(0, [1, 3], False), (0, [0, 4], False), (1, [9], False)])
  got = D.metrics(*x)[0, 15:18]
  np.testing.assert_allclose(got, [(0.5 + 0.2) / 2, 0.2, 0.5])
  x = build(3, [(0, [1, 2, 3], False)])  # variance 2/3
  np.testing.assert_allclose(D.metrics(*x)[0, 15:18], [0.6, 0.6, 0.0])
  x = build(2, [(0, [5], True), (1, [9], False)])  # no track with 2 observations: all 0
  np.testing.assert_allclose(D.metrics(*x)[0, 15:18], [0, 0, 0])


def test_dominance_family():
  # D = [3/4, 1, 0 (empty)]; weak: D < 0.5 -> only the empty layer
  x = build(3, [(0, [3, 1], True), (0, [1], True)])
  got = D.metrics(*x)[0, 18:22]
  np.testing.assert_allclose(got, [(0.75 + 1) / 3, 0.0, 0.0, 1 / 3])
  x = build(2, [(0, [1, 1], False), (0, [1, 1], False), (0, [1, 1], False)])  # 1/3 everywhere
  np.testing.assert_allclose(D.metrics(*x)[0, 18:22], [1 / 3, 1 / 3, 1 / 3, 1.0])
  x = build(1, [(0, [0.0], False)])  # alive but max 0 -> D = 0
  assert metric(x, "dominance_mean") == 0 and metric(x, "weak_dominance_ratio") == 1


def test_density_family_and_alive_rule():
  # a track alive at the end counts at every layer up to L-1; a dead one up to its death layer
  x = build(4, [(0, [1, 1, 1, 1], False), (1, [1, 1], True), (3, [1], False)], max_concurrent=2)
  got = D.metrics(*x)[0, 22:26]
  n = np.array([1, 2, 2, 2])
  np.testing.assert_allclose(got, [n.mean(), 2, n.std(), 2])


def test_metrics_use_the_tracked_layer_count():
  # the same two tracks scored as L = 2 vs padded to L = 4 give different rates: L is never assumed
  x2 = build(2, [(0, [1, 1], False), (1, [1], False)])
  x4 = build(4, [(0, [1, 1, 1, 1], False), (1, [1, 1, 1], False)])
  assert metric(x2, "birth_rate") == 1.0 and metric(x4, "birth_rate") == 0.5


@pytest.mark.parametrize("variant", T.VARIANTS)
def test_exact_relations(variant):
  pooled, w = synthetic(seed=5, n_texts=8)
  cfg = T.TrackerConfig.from_config(top_k=6).variant(variant)
  _, tr = T.track_pooled(pooled, T.unit_decoder(w), cfg)
  m = dict(zip(D.METRIC_NAMES, D.track_metrics(tr).T))
  n_layers = pooled.shape[1]
  b, d = m["total_births"], m["total_deaths"]
  np.testing.assert_array_equal(b, tr.n_tracks)
  np.testing.assert_allclose(m["survival_rate"], np.where(b > 0, (b - d) / np.maximum(b, 1), 0))
  np.testing.assert_allclose(m["birth_rate"], b / n_layers)
  np.testing.assert_allclose(m["death_rate"], d / n_layers)
  np.testing.assert_allclose(m["churn_ratio"], (b + d) / (2 * n_layers))
  np.testing.assert_array_equal(m["max_concurrent_tracks"], m["density_max"])
  st = D.per_layer_stats(tr.birth, tr.death, tr.act)
  assert (st["density"] <= cfg.top_k).all() and (st["competition"] <= st["density"]).all()
  # batched metrics equal per-text metrics
  for i in range(tr.birth.shape[0]):
    t = tr.text(i)
    one = D.metrics(t["birth"], t["death"], t["act"], t["fid"], tr.max_concurrent[i])
    np.testing.assert_allclose(one, D.track_metrics(tr)[i])


def test_reconstruction_family():
  e = np.arange(12, dtype=float) + 1  # L = 12: late ratio uses the last and first 6 layers
  got = D.reconstruction_metrics(e)
  late = np.mean(e[6:]) / (np.mean(e[:6]) + 1e-8)
  np.testing.assert_allclose(got, [e.mean(), e.std(), 12, 1, 12, 11, 11, late])
  short = D.reconstruction_metrics(np.array([[1.0, 3.0, 3.0, 2.0]]))[0]
  np.testing.assert_allclose(short, [2.25, np.std([1, 3, 3, 2]), 3, 1, 2, 1, 1, 1])  # first argmax


def test_degeneracy_report():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(100, 26))
  x[:, 3] = 7.0  # constant
  x[:, 5] = np.where(np.arange(100) < 97, 1.0, 2.0)  # near-constant (97 %)
  x[:, 7] = 2 * x[:, 8]  # collinear: one dimension
  rep = D.degeneracy_report(x, density=np.full((100, 4), 5), top_k=5, list_lengths=np.full((100, 4), 5))
  assert rep["constant"] == [D.METRIC_NAMES[3]]
  assert rep["near_constant"] == [D.METRIC_NAMES[5]]
  assert rep["columns"][D.METRIC_NAMES[5]]["n_distinct"] == 2
  assert rep["saturation_rate"] == 1.0
  assert rep["list_length"]["histogram"] == {"5": 400}
  assert 20 <= rep["effective_rank_99"] <= 24
  assert D.constant_metrics(x) == [D.METRIC_NAMES[3]]
  assert D.constant_metrics(x, near=True) == [D.METRIC_NAMES[3], D.METRIC_NAMES[5]]
  assert D.effective_rank(np.ones((5, 3))) == 0
