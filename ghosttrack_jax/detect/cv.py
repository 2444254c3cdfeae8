"""Cross-validation of one method on the saved folds: everything a method fits (constant-column drop,
scaler, C, probe layer, bag-of-words vocabulary, decision threshold) is fit on the training folds only.

C, the probe layer and (for `ghosttrack/inner_cv_settings`) the tracker setting are chosen by grouped
inner cross-validation; the threshold maximises Youden's J on
the inner out-of-fold scores of the training rows (`stats.choose_threshold`).

Unsupervised scores (`Method.sign`) fit nothing: the score is the sign times the column, only the
threshold is chosen on the training rows. Semantic-entropy probes (`Method.target`) are fit, and their
C and layer chosen, against the semantic entropy of the training rows binarised at the split that best
separates low from high values (`binarise`), never against the labels; their scores are evaluated against
correctness like every other method's. `cross_validate(..., folds=...)` runs any other fold assignment
on the same code (leave-one-relation-out: `relation_folds`).
"""

import dataclasses

import numpy as np

from ghosttrack_jax import stats
from ghosttrack_jax.detect import classifiers
from ghosttrack_jax.detect.methods import FeatureData, Method


class FixedScore:
  """An unsupervised score: sign x the single column (`classifiers.proba` reads column 1)."""

  def __init__(self, sign: float):
    self.sign = float(sign)

  def predict_proba(self, x):
    v = self.sign * np.asarray(x, np.float64)[:, 0]
    return np.stack([-v, v], 1)


def binarise(values) -> np.ndarray:
  """1 where `values` lie above the threshold that maximises the between-class variance (Otsu's rule:
  the split that best separates low from high values), else 0; all 0 when the values are constant."""
  v = np.asarray(values, np.float64)
  cand = np.unique(v)[:-1]
  if cand.size == 0:
    return np.zeros(v.size, int)
  sv = np.sort(v)
  n = sv.size
  k = np.searchsorted(sv, cand, side="right")  # rows at or below each candidate
  csum = np.cumsum(sv)
  m0 = csum[k - 1] / k
  m1 = (csum[-1] - csum[k - 1]) / (n - k)
  between = k * (n - k) * (m0 - m1) ** 2
  return (v > cand[int(np.argmax(between))]).astype(int)


def relation_folds(data: "FeatureData", n_folds: int = 0, seed: int = 0) -> np.ndarray:
  """[1, N] relation-held-out folds: every row of a relation sits in one fold, so a model is never fit on
  a relation it scores. n_folds 0 (or >= the number of relations): one fold per relation (exact
  leave-one-relation-out, relations sorted by name); else the relations are dealt into n_folds folds of
  similar size (largest first, each to the smallest fold; ties in a seeded order)."""
  names = sorted(set(data.relation.tolist()))
  if not n_folds or n_folds >= len(names):
    return np.array([[names.index(r) for r in data.relation]])
  sizes = {r: int(np.sum(data.relation == r)) for r in names}
  order = np.random.default_rng(seed).permutation(len(names))
  by_size = sorted((names[i] for i in order), key=lambda r: -sizes[r])
  load, fold_of = np.zeros(n_folds), {}
  for r in by_size:
    f = int(np.argmin(load))
    fold_of[r], load[f] = f, load[f] + sizes[r]
  return np.array([[fold_of[r] for r in data.relation]])


def _features(spec: "Method", data: "FeatureData", rows, choice: dict) -> np.ndarray:
  """The method's feature matrix for `rows`, given the choices made on the training rows."""
  if spec.candidate_sets:
    return np.asarray(data.sets[choice["feature_set"]][rows], np.float64)
  if spec.layer_select:
    x3 = data.get3(spec.feature_set, rows)
    x = x3[:, choice["layer_indices"]].reshape(len(rows), -1)
    if spec.extra_parts:
      x = np.concatenate([x, data.get_parts(spec.extra_parts, rows)], axis=1)
    return x
  return data.get(spec, rows)


def layer_window(best: int, n_layers: int, width: int) -> list[int]:
  """`width` contiguous layer indices around `best`, shifted to stay inside 0..n_layers-1."""
  width = max(1, min(width, n_layers))
  lo = min(max(best - width // 2, 0), n_layers - width)
  return list(range(lo, lo + width))


@dataclasses.dataclass
class FitResult:
  model: object
  threshold: float
  choice: dict
  degenerate: bool


def fit_with_selection(spec: "Method", data: "FeatureData", train, y_all, groups_all, cfg, seed) -> FitResult:
  """Fits one method on rows `train`: inner-CV choice of C / layer, threshold from inner OOF scores."""
  y, groups = y_all[train], groups_all[train]
  if spec.sign:  # unsupervised: nothing to fit but the threshold
    model = FixedScore(spec.sign)
    return FitResult(
      model, stats.choose_threshold(classifiers.proba(model, data.get(spec, train)), y), {}, False
    )
  # what the model is fit (and C / layer chosen) against: the labels, or binarised semantic entropy (SEP)
  y_fit = y if spec.target == "label" else binarise(_target_values(spec, data, train))
  splits = classifiers.inner_splits(y_fit, groups, cfg.inner_folds, seed)
  cs = tuple(cfg.logistic_cs)
  choice = {}
  if spec.candidate_sets:
    # the tracker setting (a feature set of the track stage's sweeps) with the best inner-CV AUROC
    if splits is not None:
      aucs = [
        classifiers.auc_or_worst(
          classifiers.lr_inner_oofs(np.asarray(data.sets[s][train], np.float64), y, splits, (1.0,))[1.0], y
        )
        for s in spec.candidate_sets
      ]
      chosen = spec.candidate_sets[int(np.argmax(aucs))]
    else:
      chosen = spec.candidate_sets[0]
    choice["feature_set"] = chosen
  elif spec.layer_select:
    x3 = data.get3(spec.feature_set, train)
    if splits is not None:
      scores = [
        classifiers.auc_or_worst(classifiers.lr_inner_oofs(x3[:, l], y_fit, splits, (1.0,))[1.0], y_fit)
        for l in range(x3.shape[1])
      ]
      layer = int(np.argmax(scores))
    else:
      layer = x3.shape[1] - 1
    choice["layer_index"] = layer
    choice["layer"] = int(data.layers[layer])
    idx = layer_window(layer, x3.shape[1], spec.layer_range) if spec.layer_range else [layer]
    choice["layer_indices"] = idx
    choice["layers"] = [int(data.layers[i]) for i in idx]
  x = _features(spec, data, train, choice)
  if spec.classifier == "logistic" and splits is not None and spec.search_c:
    oofs = (
      _inner_oof_by_c(spec, x, y_fit, splits, cs)
      if spec.text_features
      else classifiers.lr_inner_oofs(x, y_fit, splits, cs)
    )
    aucs = {c: classifiers.auc_or_worst(o, y_fit) for c, o in oofs.items()}
    best_c = max(cs, key=lambda c: (aucs[c], -c))  # ties -> stronger regularisation
    choice["C"] = best_c
    oof = oofs[best_c]
  else:
    best_c = 1.0
    oof = classifiers.inner_oof(lambda: spec.make(best_c), x, y_fit, splits) if splits is not None else None
    if spec.classifier == "logistic":
      choice["C"] = best_c
  # the threshold is always for the labels (a SEP's decision is still "hallucinated or not")
  threshold = stats.choose_threshold(oof, y) if oof is not None else 0.5
  model, degenerate = classifiers.fit_or_prior(lambda: spec.make(best_c), x, y_fit)
  return FitResult(model, threshold, choice, degenerate)


def _target_values(spec: "Method", data: "FeatureData", rows) -> np.ndarray:
  cols = data.columns("question_scores")
  return data.sets["question_scores"][rows, cols.index(spec.target)]


def _inner_oof_by_c(spec, x, y, splits, cs) -> dict:
  return {c: classifiers.inner_oof(lambda c=c: spec.make(c), x, y, splits) for c in cs}


def predict(spec: "Method", data: "FeatureData", fit: FitResult, rows) -> np.ndarray:
  return classifiers.proba(fit.model, _features(spec, data, rows, fit.choice))


def cross_validate(spec: Method, data: FeatureData, cfg, labels=None, folds=None) -> dict:
  """Out-of-fold scores [R, N], thresholds [R, K] and per-fold choices of one method.

  `labels` replaces the primary labels (label-method sensitivity; same folds); `folds` [R, N] replaces
  the saved folds (leave-one-relation-out)."""
  labels = data.label if labels is None else np.asarray(labels).astype(int)
  folds = data.folds if folds is None else np.asarray(folds)
  n_rep, n = folds.shape
  k = int(folds.max()) + 1
  scores = np.zeros((n_rep, n))
  thresholds = np.full((n_rep, k), 0.5)
  choices, degenerate = [], 0
  for r in range(n_rep):
    for f in range(k):
      train = np.flatnonzero(folds[r] != f)
      test = np.flatnonzero(folds[r] == f)
      fit = fit_with_selection(spec, data, train, labels, data.group_id, cfg, seed=cfg.seed + 1000 * r + f)
      scores[r, test] = predict(spec, data, fit, test)
      thresholds[r, f] = fit.threshold
      choices.append({"repeat": r, "fold": f, **fit.choice})
      degenerate += int(fit.degenerate)
  return {"scores": scores, "thresholds": thresholds, "choices": choices, "degenerate_folds": degenerate}
