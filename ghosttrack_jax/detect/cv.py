"""Cross-validation of one method on the saved folds: everything a method fits (constant-column drop,
scaler, C, probe layer, bag-of-words vocabulary, decision threshold) is fit on the training folds only.

C, the probe layer and (for `ghosttrack/inner_cv_settings`) the tracker setting are chosen by grouped
inner cross-validation; the threshold maximises Youden's J on
the inner out-of-fold scores of the training rows (`stats.choose_threshold`).
"""

import dataclasses

import numpy as np

from ghosttrack_jax import stats
from ghosttrack_jax.detect import classifiers
from ghosttrack_jax.detect.methods import FeatureData, Method


@dataclasses.dataclass
class FitResult:
  model: object
  threshold: float
  choice: dict
  degenerate: bool


def fit_with_selection(spec: "Method", data: "FeatureData", train, y_all, groups_all, cfg, seed) -> FitResult:
  """Fits one method on rows `train`: inner-CV choice of C / layer, threshold from inner OOF scores."""
  y, groups = y_all[train], groups_all[train]
  splits = classifiers.inner_splits(y, groups, cfg.inner_folds, seed)
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
    x = np.asarray(data.sets[chosen][train], np.float64)
  elif spec.layer_select:
    x3 = data.get3(spec.feature_set, train)
    if splits is not None:
      scores = [
        classifiers.auc_or_worst(classifiers.lr_inner_oofs(x3[:, l], y, splits, (1.0,))[1.0], y)
        for l in range(x3.shape[1])
      ]
      layer = int(np.argmax(scores))
    else:
      layer = x3.shape[1] - 1
    choice["layer_index"] = layer
    choice["layer"] = int(data.layers[layer])
    x = x3[:, layer]
  else:
    x = data.get(spec, train)
  if spec.classifier == "logistic" and splits is not None and spec.search_c:
    oofs = (
      _inner_oof_by_c(spec, x, y, splits, cs)
      if spec.text_features
      else classifiers.lr_inner_oofs(x, y, splits, cs)
    )
    aucs = {c: classifiers.auc_or_worst(o, y) for c, o in oofs.items()}
    best_c = max(cs, key=lambda c: (aucs[c], -c))  # ties -> stronger regularisation
    choice["C"] = best_c
    oof = oofs[best_c]
  else:
    best_c = 1.0
    oof = classifiers.inner_oof(lambda: spec.make(best_c), x, y, splits) if splits is not None else None
    if spec.classifier == "logistic":
      choice["C"] = best_c
  threshold = stats.choose_threshold(oof, y) if oof is not None else 0.5
  model, degenerate = classifiers.fit_or_prior(lambda: spec.make(best_c), x, y)
  return FitResult(model, threshold, choice, degenerate)


def _inner_oof_by_c(spec, x, y, splits, cs) -> dict:
  return {c: classifiers.inner_oof(lambda c=c: spec.make(c), x, y, splits) for c in cs}


def predict(spec: "Method", data: "FeatureData", fit: FitResult, rows) -> np.ndarray:
  if spec.candidate_sets:
    x = np.asarray(data.sets[fit.choice["feature_set"]][rows], np.float64)
  elif spec.layer_select:
    x = data.get3(spec.feature_set, rows)[:, fit.choice["layer_index"]]
  else:
    x = data.get(spec, rows)
  return classifiers.proba(fit.model, x)


def cross_validate(spec: Method, data: FeatureData, cfg, labels=None) -> dict:
  """Out-of-fold scores [R, N], thresholds [R, K] and per-fold choices of one method.

  `labels` replaces the primary labels (label-method sensitivity; same folds)."""
  labels = data.label if labels is None else np.asarray(labels).astype(int)
  n_rep, n = data.folds.shape
  k = int(data.folds.max()) + 1
  scores = np.zeros((n_rep, n))
  thresholds = np.full((n_rep, k), 0.5)
  choices, degenerate = [], 0
  for r in range(n_rep):
    for f in range(k):
      train = np.flatnonzero(data.folds[r] != f)
      test = np.flatnonzero(data.folds[r] == f)
      fit = fit_with_selection(spec, data, train, labels, data.group_id, cfg, seed=cfg.seed + 1000 * r + f)
      scores[r, test] = predict(spec, data, fit, test)
      thresholds[r, f] = fit.threshold
      choices.append({"repeat": r, "fold": f, **fit.choice})
      degenerate += int(fit.degenerate)
  return {"scores": scores, "thresholds": thresholds, "choices": choices, "degenerate_folds": degenerate}
