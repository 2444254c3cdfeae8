"""Detection statistics shared by the detect and evaluate stages: AUROC and AUPRC with row weights,
question-level bootstrap weights, the Youden-J threshold and metrics at a threshold.

A library (not a stage) because detect chooses thresholds with the same AUROC code that evaluate reports.
Weights are bootstrap counts: a resample draws question groups with replacement and weights every row by
its group's count, so every statistic here accepts weights [N] or [B, N].
"""

import numpy as np
import scipy.special


def _tie_groups(scores, labels, weights):
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels).astype(bool)
  w = np.ones((1, s.size)) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
  order = np.argsort(s, kind="mergesort")
  ss = s[order]
  starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1] if s.size else np.zeros(0, int)
  ws = w[:, order]
  gpos = np.add.reduceat(ws * y[order], starts, axis=1) if s.size else np.zeros((w.shape[0], 0))
  gneg = np.add.reduceat(ws * ~y[order], starts, axis=1) if s.size else np.zeros((w.shape[0], 0))
  return gpos, gneg  # [B, n_distinct] positive / negative weight per distinct score, ascending


def auroc(scores, labels, weights=None):
  """AUROC (ties count 1/2) with optional row weights [N] or [B, N] (bootstrap counts).

  Returns a float for weights None or 1-D, else [B]; NaN where a class has no weight.
  """
  gpos, gneg = _tie_groups(scores, labels, weights)
  neg_below = np.cumsum(gneg, axis=1) - gneg
  num = (gpos * (neg_below + 0.5 * gneg)).sum(1)
  p, n = gpos.sum(1), gneg.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where((p > 0) & (n > 0), num / np.where(p * n > 0, p * n, 1.0), np.nan)
  return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def auprc(scores, labels, weights=None):
  """Average precision (scikit-learn's step definition), weighted like `auroc`."""
  gpos, gneg = _tie_groups(scores, labels, weights)
  gpos, gneg = gpos[:, ::-1], gneg[:, ::-1]  # descending thresholds
  tp, fp = np.cumsum(gpos, 1), np.cumsum(gneg, 1)
  with np.errstate(invalid="ignore", divide="ignore"):
    prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
    p = gpos.sum(1)
    out = np.where(p > 0, (gpos * prec).sum(1) / np.where(p > 0, p, 1.0), np.nan)
  return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def _harmonic(n):
  """H(n) = sum_{j<=n} 1/j, continued to real n >= 0 (digamma(n + 1) + Euler's gamma)."""
  return scipy.special.digamma(np.asarray(n, np.float64) + 1.0) + np.euler_gamma


def _rejection_area(order_key, quality, w):
  """Area under the prediction-rejection curve: the mean, over every number k = 1..W of kept answers
  (the k with the lowest `order_key`), of the kept answers' mean quality. Rows weigh w [B, N] (bootstrap
  counts: a row of weight w stands for w copies); ties in `order_key` are averaged (their expected value
  under a random order), so a constant score gets the random area exactly."""
  order = np.argsort(order_key, kind="mergesort")
  key, q, w = order_key[order], quality[order], w[:, order]
  starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
  # tied rows all get their tie group's weighted mean quality
  gw = np.add.reduceat(w, starts, axis=1)
  gq = np.add.reduceat(w * q, starts, axis=1) / np.where(gw > 0, gw, 1.0)
  qv = np.repeat(gq, np.diff(np.r_[starts, key.size]), axis=1)
  pos_end = np.cumsum(w, axis=1)  # P_i: kept answers after row i
  pos_start = pos_end - w
  c_start = np.cumsum(w * qv, axis=1) - w * qv  # cumulative quality before row i
  dh = _harmonic(pos_end) - _harmonic(pos_start)  # sum over the row's copies j of 1 / (P_{i-1} + j)
  # row i adds sum_j (C_{i-1} + j q_i) / (P_{i-1} + j) = C_{i-1} dH + q_i (w_i - P_{i-1} dH)
  total = (c_start * dh + qv * (w - pos_start * dh)).sum(axis=1)
  return total / np.maximum(pos_end[:, -1], 1e-12)


def prr(scores, labels, weights=None):
  """Prediction-rejection ratio (LM-Polygraph's PRR, every rejection level up to 100%): answers are kept
  in order of increasing score (higher score = more likely hallucinated) and the quality of a kept set is
  its share of correct answers (label 0); PRR = (area of the score - area of a random order) / (area of
  the oracle order - area of a random order). 1 = the oracle, ~0 = random, < 0 = worse than random.

  Returns a float for weights None or 1-D, else [B]; NaN where a class has no weight."""
  s = np.asarray(scores, np.float64)
  quality = 1.0 - np.asarray(labels, np.float64)
  w = np.ones((1, s.size)) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
  area = _rejection_area(s, quality, w)
  oracle = _rejection_area(-quality, quality, w)
  total = w.sum(1)
  rand = (w * quality).sum(1) / np.where(total > 0, total, 1.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(
      oracle - rand > 1e-12, (area - rand) / np.where(oracle - rand > 1e-12, oracle - rand, 1), np.nan
    )
  return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def group_bootstrap_weights(groups, n_boot: int, seed: int) -> np.ndarray:
  """[n_boot, N] row weights: each resample draws len(unique groups) groups with replacement."""
  _, inv = np.unique(np.asarray(groups), return_inverse=True)
  n_groups = inv.max() + 1
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
  return counts[:, inv].astype(np.float32)


def choose_threshold(scores, labels) -> float:
  """Threshold maximising Youden's J (= balanced accuracy) on the given (training) scores.

  Predictions are `score >= threshold`. Ties in J go to the higher threshold. With one class only, 0.5.
  """
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels).astype(bool)
  if y.all() or not y.any():
    return 0.5
  cand = np.unique(s)[::-1]  # descending; predicting positive for s >= cand[i]
  gpos, gneg = _tie_groups(s, y, None)
  tpr = np.cumsum(gpos[0, ::-1]) / y.sum()
  fpr = np.cumsum(gneg[0, ::-1]) / (~y).sum()
  return float(cand[int(np.argmax(tpr - fpr))])


def threshold_metrics(scores, labels, thresholds) -> dict:
  """Accuracy, balanced accuracy, precision, recall, F1 of `score >= threshold` (per-row thresholds ok)."""
  y = np.asarray(labels).astype(bool)
  pred = np.asarray(scores) >= np.asarray(thresholds)
  tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
  fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
  prec = tp / (tp + fp) if tp + fp else 0.0
  rec = tp / (tp + fn) if tp + fn else 0.0
  spec = tn / (tn + fp) if tn + fp else 0.0
  return {
    "accuracy": (tp + tn) / max(len(y), 1),
    "balanced_accuracy": (rec + spec) / 2,
    "precision": prec,
    "recall": rec,
    "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
    "tp": tp,
    "fp": fp,
    "fn": fn,
    "tn": tn,
  }


def percentile_ci(values) -> list:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return [None, None]
  return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def nanmean(x, axis=None):
  """np.nanmean without the all-NaN RuntimeWarning (undefined stays NaN)."""
  x = np.asarray(x, np.float64)
  n = np.isfinite(x).sum(axis=axis)
  total = np.where(np.isfinite(x), x, 0.0).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, total / np.where(n > 0, n, 1), np.nan)


def finite_or_none(x):
  return None if x is None or not np.isfinite(x) else float(x)
