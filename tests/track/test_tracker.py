"""Tracker tests: selection rules, association costs, Hungarian "solve then reject", lifecycle
invariants, the docs/method.md §3.7 worked example and the effect of every ablation variant."""

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import optimize

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.track import divergence
from ghosttrack_jax.track import tracker as T


def worked_example():
  """docs/method.md §3.7: L = 3; A(0.9) B(0.4) | C(0.8) D(0.7) | E(0.6); cos(A, C) = 0.9, others 0."""
  w = np.zeros((3, 2, 8), np.float32)
  w[0, 0, 0] = 1  # A
  w[0, 1, 1] = 1  # B
  w[1, 0, 0], w[1, 0, 2] = 0.9, np.sqrt(0.19)  # C
  w[1, 1, 3] = 1  # D
  w[2, 0, 4] = 1  # E
  w[2, 1, 5] = 1  # unused feature of layer 2
  pooled = np.array([[[0.9, 0.4], [0.8, 0.7], [0.6, 0.0]]], np.float32)
  return pooled, w


def synthetic(n_texts=6, n_layers=6, h=64, d=32, n_concepts=12, seed=0):
  """Pooled codes and decoders with cross-layer structure: a concept keeps its direction across
  layers (plus noise) under a different feature id per layer, and persists in a text for a while."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(h, d))
  perm = np.stack([rng.permutation(h) for _ in range(n_layers)])  # concept c is id perm[l, c]
  w = np.zeros((n_layers, h, d))
  for l in range(n_layers):
    w[l, perm[l]] = base + 0.3 * rng.normal(size=(h, d))
  pooled = np.zeros((n_texts, n_layers, h), np.float32)
  for b in range(n_texts):
    for c in rng.choice(h, n_concepts, replace=False):
      start = rng.integers(n_layers)
      stop = min(n_layers, start + 1 + rng.integers(n_layers))
      level = rng.uniform(0.2, 3.0)
      for l in range(start, stop):
        pooled[b, l, perm[l, c]] = level * rng.uniform(0.7, 1.3)
    noise = rng.random((n_layers, h)) < 0.05
    pooled[b] += noise * rng.uniform(0, 1.0, size=(n_layers, h)).astype(np.float32)
  return pooled, w.astype(np.float32)


def run(pooled, w, **kw):
  cfg = T.TrackerConfig.from_config(**kw)
  return T.track_pooled(pooled, T.unit_decoder(w), cfg)


# ---- worked example ------------------------------------------------------------------------


def test_worked_example_tracks():
  pooled, w = worked_example()
  _, tr = run(pooled, w)
  t = tr.text(0)
  np.testing.assert_array_equal(t["birth"], [0, 1, 2])
  np.testing.assert_array_equal(t["death"], [1, 1, T.NO_DEATH])
  np.testing.assert_allclose(t["act"], [[0.9, 0.8, 0], [0, 0.7, 0], [0, 0, 0.6]], atol=1e-7)
  np.testing.assert_array_equal(t["fid"], [[0, 0, -1], [-1, 1, -1], [-1, -1, 0]])
  assert (tr.total_births[0], tr.total_deaths[0], tr.max_concurrent[0]) == (3, 2, 2)
  alive = divergence.alive_mask(tr.birth, tr.death, 3)[0]
  assert [set(np.flatnonzero(alive[:, l]) + 1) for l in range(3)] == [{1}, {1, 2}, {3}]


def test_worked_example_costs():
  pooled, w = worked_example()
  cfg = T.TrackerConfig.from_config()
  sel = T.select_features(pooled, cfg.top_k, cfg.pooling)
  costs = T.association_costs(T.unit_decoder(w), sel, cfg)
  assert costs.shape == (1, 2, 2, 2)
  np.testing.assert_allclose(costs[0, 0, 0], [0.6 * 0.1 + 0.2 * 0.1 / 1.7, 0.6 + 0.2 * 0.2 / 1.6], rtol=1e-6)
  # layer 2: track 1 (C, 0.8) and track 2 (D, 0.7) against E (0.6)
  np.testing.assert_allclose(costs[0, 1, :, 0], [0.6 + 0.2 * 0.2 / 1.4, 0.6 + 0.2 * 0.1 / 1.3], rtol=1e-6)


# ---- selection -----------------------------------------------------------------------------


def test_pooling_variants():
  # L = 1, B = 2, T = 4, h = 3. Text 0: prompt at 0-1, answer at 2-3. Text 1: one pad at the end.
  codes = np.zeros((1, 2, 4, 3), np.float32)
  codes[0, 0] = [[9, 0, 0], [0, 1, 0], [0, 2, 4], [1, 4, 0]]
  codes[0, 1] = [[0, 0, 1], [2, 0, 0], [0, 3, 0], [7, 7, 7]]
  token = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  answer = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], bool)
  pool = lambda p: np.asarray(T.pool_codes(codes, token, answer, p))[:, 0]
  np.testing.assert_allclose(pool("answer_max"), [[1, 4, 4], [2, 3, 0]])
  np.testing.assert_allclose(pool("answer_mean"), [[0.5, 3, 2], [1, 1.5, 0]])
  np.testing.assert_allclose(pool("last_token"), [[1, 4, 0], [0, 3, 0]])
  np.testing.assert_allclose(pool("max_all"), [[9, 4, 4], [2, 3, 1]])  # pad row (7s) ignored
  no_answer = np.zeros_like(answer)
  np.testing.assert_allclose(np.asarray(T.pool_codes(codes, token, no_answer, "answer_max")), 0)
  with pytest.raises(ConfigError):
    T.pool_codes(codes, token, answer, "mean_all")


def test_selection_rules_and_ties():
  pooled = np.array([[[0.0, 2.0, 1.0, 2.0, 0.0, -1.0]]], np.float32)
  pos = T.select_features(pooled, 5, "answer_max")
  np.testing.assert_array_equal(pos.fid[0, 0], [1, 3, 2, -1, -1])  # ties: lower id first
  np.testing.assert_allclose(pos.act[0, 0], [2, 2, 1, 0, 0])
  assert pos.n_valid[0, 0] == 3
  zeros = T.select_features(pooled, 5, "max_all")  # parity: the k largest, zeros allowed
  np.testing.assert_array_equal(zeros.fid[0, 0], [1, 3, 2, 0, 4])
  assert zeros.n_valid[0, 0] == 5
  big = T.select_features(pooled, 50, "answer_max")  # k > h: lists are h long
  assert big.fid.shape == (1, 1, 6)


def test_selection_ties_random_against_numpy():
  rng = np.random.default_rng(1)
  pooled = rng.integers(0, 4, size=(3, 5, 40)).astype(np.float32)
  sel = T.select_features(pooled, 10, "answer_max")
  for b, l in itertools.product(range(3), range(5)):
    order = np.lexsort((np.arange(40), -pooled[b, l]))[:10]
    order = order[pooled[b, l, order] > 0]
    np.testing.assert_array_equal(sel.fid[b, l, : order.size], order)
    assert sel.n_valid[b, l] == order.size


def test_head_equals_smaller_top_k():
  pooled, _ = synthetic()
  big = T.select_features(pooled, 20, "answer_max")
  small = T.select_features(pooled, 7, "answer_max")
  head = big.head(7)
  for a, b in ((head.fid, small.fid), (head.act, small.act), (head.n_valid, small.n_valid)):
    np.testing.assert_array_equal(a, b)


# ---- costs ---------------------------------------------------------------------------------


def test_costs_match_formula_and_edge_cases():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(3, 10, 5)).astype(np.float32)
  w[1, 4] = 0  # a zero decoder row: cosine taken as 0
  pooled = np.zeros((1, 3, 10), np.float32)
  pooled[0, 0, [0, 1, 2]] = [2.0, 0.5e-6, 1.0]
  pooled[0, 1, [3, 4, 5]] = [1.5, 0.05, 0.8]
  pooled[0, 2, [6, 7]] = [0.3, 0.2]
  cfg = T.TrackerConfig.from_config(top_k=3, pooling="max_all")  # zeros allowed: exercises b = 0 candidates
  sel = T.select_features(pooled, cfg.top_k, cfg.pooling)
  costs = T.association_costs(T.unit_decoder(w), sel, cfg)
  for l, p, j in itertools.product(range(2), range(3), range(3)):
    e, f = w[l, sel.fid[0, l, p]], w[l + 1, sel.fid[0, l + 1, j]]
    ne, nf = np.linalg.norm(e), np.linalg.norm(f)
    cos = 0.0 if ne == 0 or nf == 0 else np.clip(e @ f / (ne * nf), -1, 1)
    a, b = sel.act[0, l, p], sel.act[0, l + 1, j]
    c = abs(a - b) / (a + b) if a > 1e-6 else (1.0 if b > 0.1 else 0.0)
    np.testing.assert_allclose(costs[0, l, p, j], 0.6 * (1 - cos) + 0.2 * c, rtol=1e-5, atol=1e-6)


# ---- assignment ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (1, 4), (6, 1)])
def test_hungarian_tie_breaking_matches_scipy(shape):
  rng = np.random.default_rng(sum(shape))
  for _ in range(50):
    cost = rng.integers(0, 3, size=shape).astype(np.float64)  # many ties
    rows, cols = T.hungarian(cost)
    ref_r, ref_c = optimize.linear_sum_assignment(cost)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(cols, ref_c)
    assert np.all(np.diff(rows) > 0)
    # optimal over min(n, m) pairs (brute force)
    n, m = shape
    if n <= m:
      best = min(cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(m), n))
    else:
      best = min(cost[list(p), np.arange(m)].sum() for p in itertools.permutations(range(n), m))
    assert cost[rows, cols].sum() == best
    acc_r, acc_c = T.assign(cost / 4, 0.5)  # costs in {0, .25, .5}: the .5 pairs are rejected
    keep = cost[ref_r, ref_c] / 4 < 0.5
    np.testing.assert_array_equal(acc_r, ref_r[keep])
    np.testing.assert_array_equal(acc_c, ref_c[keep])


def test_solve_then_reject_is_not_thresholded_matching():
  # The optimum pairs (0,0) and (1,1); (1,1) costs 0.6 and is rejected. A thresholded matching would
  # have kept two pairs via (0,1) and (1,0), both 0.4.
  cost = np.array([[0.0, 0.4], [0.4, 0.6]])
  rows, cols = T.assign(cost, 0.5)
  np.testing.assert_array_equal(rows, [0])
  np.testing.assert_array_equal(cols, [0])
  # threshold is strict
  rows, _ = T.assign(np.array([[0.5]]), 0.5)
  assert rows.size == 0


def test_greedy_rules():
  cost = np.array([[0.1, 0.2], [0.2, 0.45]])
  # track 0 first (higher activation) takes column 0; track 1 takes column 1 (0.45 < 0.5)
  r, c = T.assign_greedy(cost, np.array([0.9, 0.8]), 0.5)
  assert list(zip(r, c)) == [(0, 0), (1, 1)]
  r, c = T.assign(cost, 0.5)  # Hungarian prefers the anti-diagonal (0.4 < 0.55)
  assert list(zip(r, c)) == [(0, 1), (1, 0)]
  # track order by latest activation; ties: creation order. Cost ties: lower column.
  cost = np.array([[0.3, 0.3], [0.3, 0.3]])
  r, c = T.assign_greedy(cost, np.array([0.5, 0.7]), 0.5)
  assert list(zip(r, c)) == [(0, 1), (1, 0)]
  r, c = T.assign_greedy(cost, np.array([0.5, 0.5]), 0.5)
  assert list(zip(r, c)) == [(0, 0), (1, 1)]
  # a rejected track takes nothing: the feature stays available to the next track
  cost = np.array([[0.6, 0.9], [0.2, 0.9]])
  r, c = T.assign_greedy(cost, np.array([0.9, 0.1]), 0.5)
  assert list(zip(r, c)) == [(1, 0)]


def test_feature_id_rule():
  r, c = T.assign_feature_id(np.array([5, 7, 9]), np.array([9, 1, 5]))
  assert list(zip(r, c)) == [(0, 2), (2, 0)]


# ---- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", T.VARIANTS)
@pytest.mark.parametrize("pooling", ["answer_max", "max_all"])
def test_lifecycle_invariants(variant, pooling):
  pooled, w = synthetic(seed=3)
  cfg = T.TrackerConfig.from_config(top_k=8, pooling=pooling).variant(variant)
  sel, tr = T.track_pooled(pooled, T.unit_decoder(w), cfg)
  n_layers = pooled.shape[1]
  assert tr.n_layers == n_layers
  alive = divergence.alive_mask(tr.birth, tr.death, n_layers)
  density = alive.sum(axis=1)
  assert density.max() <= cfg.top_k
  np.testing.assert_array_equal(tr.max_concurrent, density.max(axis=1))
  np.testing.assert_array_equal(tr.total_births, (tr.birth >= 0).sum(1))
  np.testing.assert_array_equal(tr.total_deaths, ((tr.birth >= 0) & (tr.death >= 0)).sum(1))
  np.testing.assert_array_equal(density[:, -1], tr.total_births - tr.total_deaths)
  for b in range(pooled.shape[0]):
    t = tr.text(b)
    observed = t["fid"] >= 0
    # observations cover exactly [birth, death or L-1]: matched at every layer or dead (no revival)
    np.testing.assert_array_equal(observed, alive[b, : tr.n_tracks[b]])
    assert np.all(np.diff(t["birth"]) >= 0)  # ids in creation order
    assert np.all((t["death"] == T.NO_DEATH) | (t["death"] >= t["birth"]))
    for l in range(n_layers):
      ids = t["fid"][observed[:, l], l]
      assert len(set(ids)) == ids.size  # a feature feeds at most one track
      assert set(ids) <= set(sel.fid[b, l, : sel.n_valid[b, l]])
      # a track is born only above the birth threshold
      born = t["birth"] == l
      assert np.all(t["act"][born, l] > cfg.birth_threshold)
    # every selected feature above the birth threshold is on some track
    for l in range(n_layers):
      strong = sel.fid[b, l, : sel.n_valid[b, l]][sel.act[b, l, : sel.n_valid[b, l]] > 0.5]
      assert set(strong) <= set(t["fid"][:, l])
    if variant == "no_association":
      assert np.all(observed.sum(1) == 1)


def test_every_variant_changes_the_tracks():
  pooled, w = synthetic(seed=4)
  w_unit = T.unit_decoder(w)
  base = T.TrackerConfig.from_config(top_k=8)
  out = {}
  for name in T.VARIANTS:
    _, tr = T.track_pooled(pooled, w_unit, base.variant(name))
    out[name] = tr
  ref = out["hungarian"]
  assert (ref.total_deaths < ref.total_births).all()  # the default really links features
  for name in T.VARIANTS[1:]:
    tr = out[name]
    same = (
      tr.act.shape == ref.act.shape
      and np.array_equal(tr.fid, ref.fid)
      and np.array_equal(tr.birth, ref.birth)
      and np.array_equal(tr.death, ref.death)
    )
    assert not same, f"variant {name} produced the default tracks"
  m = {k: divergence.track_metrics(v) for k, v in out.items()}
  for name in T.VARIANTS[1:]:
    assert not np.allclose(m[name], m["hungarian"]), name


def test_pad_and_single_layer():
  pooled, w = synthetic(n_texts=3)
  cfg = T.TrackerConfig.from_config(top_k=5)
  sel, tr = T.track_pooled(pooled, T.unit_decoder(w), cfg)
  padded = T.track_selection(
    sel, T.association_costs(T.unit_decoder(w), sel, cfg), cfg, pad_to=tr.birth.shape[1] + 4
  )
  np.testing.assert_array_equal(divergence.track_metrics(padded), divergence.track_metrics(tr))
  with pytest.raises(ValueError):
    T.track_selection(sel, None, cfg)
  _, one = T.track_pooled(pooled[:, :1], w[:1], cfg)  # L = 1: initialisation only
  assert one.n_layers == 1 and (one.total_deaths == 0).all()


def test_config_and_variants():
  c = config_lib.base_config()
  c.tracking.top_k, c.tracking.pooling, c.tracking.w_act = 7, "last_token", 0.3
  cfg = T.TrackerConfig.from_config(c.tracking)
  assert (cfg.top_k, cfg.pooling, cfg.w_act) == (7, "last_token", 0.3)
  # the defaults are base_config's: the dataclass holds none of its own
  assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(T.TrackerConfig))
  assert T.TrackerConfig.from_config() == T.TrackerConfig.from_config(config_lib.base_config().tracking)
  assert T.TrackerConfig.from_config(top_k=3).top_k == 3
  assert cfg.variant("single_hypothesis").top_k == 1
  assert cfg.variant("greedy").association == "greedy"
  with pytest.raises(ConfigError):
    cfg.variant("random")
  with pytest.raises(ConfigError):
    T.TrackerConfig.from_config(pooling="sum")


@pytest.mark.parametrize("pooling", ["answer_max", "max_all"])
def test_host_and_device_cost_paths_agree(pooling):
  pooled, w = synthetic(seed=6)
  cfg = T.TrackerConfig.from_config(top_k=10, pooling=pooling)
  sel = T.select_features(pooled, cfg.top_k, cfg.pooling)
  w_unit = T.unit_decoder(w)
  host = T.association_costs(np.asarray(w_unit), sel, cfg, backend="numpy")
  dev = T.association_costs(w_unit, sel, cfg, backend="jax")
  k = sel.n_valid.max()
  assert host.shape == dev.shape == (pooled.shape[0], pooled.shape[1] - 1, k, k)
  valid = (np.arange(k)[None, None, :, None] < sel.n_valid[:, :-1, None, None]) & (
    np.arange(k)[None, None, None, :] < sel.n_valid[:, 1:, None, None]
  )
  np.testing.assert_allclose(host[valid], dev[valid], rtol=1e-5, atol=1e-6)
