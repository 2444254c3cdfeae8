"""scikit-learn models of the `detect` stage and the inner cross-validation they are tuned with.

Every model is a pipeline fit on training rows only: drop constant columns -> StandardScaler -> (for
logistic regression, an exact row-space basis when columns outnumber rows) -> classifier. See
`detect.methods` and `detect.cv` for how methods, folds and thresholds use them.
"""

import logging

import numpy as np
import sklearn.base
import sklearn.ensemble
import sklearn.feature_selection
import sklearn.linear_model
import sklearn.pipeline
import sklearn.preprocessing
import sklearn.svm
import sklearn.utils.class_weight

from ghosttrack_jax import config_lib, stats
from ghosttrack_jax.answer import folds as folds_lib

CLASSIFIERS = config_lib.CLASSIFIERS  # the value set lives in config_lib


class BalancedGradientBoosting:
  """GradientBoostingClassifier fit with 'balanced' sample weights (it has no class_weight)."""

  def __init__(self, random_state=42):
    self.model = sklearn.ensemble.GradientBoostingClassifier(
      n_estimators=100, learning_rate=0.1, max_depth=3, random_state=random_state
    )

  def fit(self, x, y):
    w = sklearn.utils.class_weight.compute_sample_weight("balanced", y)
    self.model.fit(x, y, sample_weight=w)
    self.classes_ = self.model.classes_
    return self

  def predict_proba(self, x):
    return self.model.predict_proba(x)

  @property
  def feature_importances_(self):
    return self.model.feature_importances_


class MeanEnsemble:
  """Mean P(y=1) of RF(100), GB(100) and LR(C=1), each in its own scaled pipeline (docs/method.md §5.1)."""

  def __init__(self):
    self.members = [
      make_classifier("random_forest"),
      make_classifier("gradient_boosting"),
      make_classifier("logistic", c=1.0),
    ]

  def fit(self, x, y):
    for m in self.members:
      m.fit(x, y)
    self.classes_ = np.array([0, 1])
    return self

  def predict_proba(self, x):
    p = np.mean([m.predict_proba(x)[:, 1] for m in self.members], axis=0)
    return np.stack([1 - p, p], axis=1)


class RowSpace(sklearn.base.TransformerMixin, sklearn.base.BaseEstimator):
  """Projects onto an orthonormal basis of the training rows' span when there are more columns than rows.

  For an L2-penalised linear model this is exact, not an approximation: a weight component orthogonal to
  every training row changes no training prediction and only adds to the penalty, so the optimum lies in
  the row space, w = V beta with ||w|| = ||beta||, and x . w = (x V) . beta for any x. It turns a
  320 x 69,120 all-layer probe into a 320 x 320 problem. The basis comes from the Gram matrix X X^T.
  """

  def fit(self, x, y=None):
    del y
    x = np.asarray(x, np.float64)
    self.v_ = None
    if x.shape[1] > x.shape[0]:
      w, u = np.linalg.eigh(x @ x.T)
      keep = w > max(w.max(), 0.0) * 1e-10
      self.v_ = (x.T @ u[:, keep]) / np.sqrt(w[keep])  # [p, r] orthonormal columns
    return self

  def transform(self, x):
    return x if self.v_ is None else np.asarray(x, np.float64) @ self.v_


def lr_preprocess():
  """The fitted-on-training-rows part of every logistic pipeline."""
  return sklearn.pipeline.Pipeline(
    [
      ("drop_constant", sklearn.feature_selection.VarianceThreshold(0.0)),
      ("scale", sklearn.preprocessing.StandardScaler()),
      ("rowspace", RowSpace()),
    ]
  )


def lr(c: float):
  # Newton-Cholesky: after the row-space basis there are at most n_train columns, where Newton steps
  # converge in a few iterations (lbfgs needs thousands on nearly separable wide probes). Same optimum.
  return sklearn.linear_model.LogisticRegression(
    C=c, class_weight="balanced", solver="newton-cholesky", max_iter=500
  )


def make_classifier(name: str, c: float = 1.0):
  """A fresh pipeline: drop constant columns -> StandardScaler (-> row-space basis for LR) -> classifier."""
  if name == "ensemble":
    return MeanEnsemble()
  if name == "logistic":
    return sklearn.pipeline.Pipeline(lr_preprocess().steps + [("clf", lr(c))])
  elif name == "random_forest":
    clf = sklearn.ensemble.RandomForestClassifier(
      n_estimators=100, max_features="sqrt", class_weight="balanced", random_state=42, n_jobs=1
    )
  elif name == "gradient_boosting":
    clf = BalancedGradientBoosting(random_state=42)
  elif name == "svm":
    clf = sklearn.svm.SVC(C=1.0, kernel="rbf", class_weight="balanced", probability=True, random_state=42)
  else:
    raise ValueError(f"unknown classifier {name!r}: use one of {CLASSIFIERS}")
  return sklearn.pipeline.Pipeline(
    [
      ("drop_constant", sklearn.feature_selection.VarianceThreshold(0.0)),
      ("scale", sklearn.preprocessing.StandardScaler()),
      ("clf", clf),
    ]
  )


class Constant:
  """Fallback when a training fold has one class or no non-constant column: predicts the prior."""

  def __init__(self, p):
    self.p = float(p)

  def predict_proba(self, x):
    return np.tile([1 - self.p, self.p], (len(x), 1))


def fit_or_prior(make, x, y):
  """Fits make() on (x, y); a constant model when that is impossible. Returns (model, degenerate)."""
  if (
    len(np.unique(y)) < 2
    or (x.ndim == 2 and x.shape[1] == 0)
    or (x.ndim == 2 and not (np.ptp(x, 0) > 0).any())
  ):
    return Constant(np.mean(y) if len(y) else 0.5), True
  model = make()
  try:
    model.fit(x, y)
  except ValueError as e:  # e.g. SVC's internal Platt CV with < 5 rows of a class, an empty vocabulary
    logging.warning(
      "detect: fit failed on %d rows (%s); scoring this fold with the training prior", len(y), e
    )
    return Constant(np.mean(y)), True
  return model, False


def proba(model, x) -> np.ndarray:
  return model.predict_proba(x)[:, 1]


# ---- inner CV --------------------------------------------------------------------------------


def inner_splits(y, groups, n_inner: int, seed: int):
  """Grouped, stratified inner folds on training rows; None when a class has too few groups."""
  per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
  if min(per_class) < n_inner:
    return None
  f = folds_lib.stratified_group_kfold(y, groups, n_inner, seed)
  return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in range(n_inner)]


def inner_oof(make, x, y, splits) -> np.ndarray:
  oof = np.zeros(len(y))
  for tr, te in splits:
    m, _ = fit_or_prior(make, x[tr], y[tr])
    oof[te] = proba(m, x[te])
  return oof


def lr_inner_oofs(x, y, splits, cs) -> dict:
  """Inner out-of-fold scores of logistic regression for every C, preprocessing fit once per split."""
  oofs = {c: np.zeros(len(y)) for c in cs}
  for tr, te in splits:
    if len(np.unique(y[tr])) < 2 or not (np.ptp(x[tr], 0) > 0).any():
      for c in cs:
        oofs[c][te] = np.mean(y[tr])
      continue
    pre = lr_preprocess().fit(x[tr], y[tr])
    ztr, zte = pre.transform(x[tr]), pre.transform(x[te])
    for c in cs:
      oofs[c][te] = lr(c).fit(ztr, y[tr]).predict_proba(zte)[:, 1]
  return oofs


def auc_or_worst(s, y) -> float:
  a = stats.auroc(s, y)
  return -np.inf if not np.isfinite(a) else a


def scaled_coef(model) -> np.ndarray:
  """LR coefficients on the standardised kept columns (undoing the row-space basis if one was used)."""
  coef = model.named_steps["clf"].coef_[0]
  rs = model.named_steps.get("rowspace")
  return coef if rs is None or rs.v_ is None else rs.v_ @ coef


def importances(model, names) -> dict | None:
  if isinstance(model, Constant) or not hasattr(model, "named_steps"):
    return None
  kept = model.named_steps["drop_constant"].get_support()
  kept_names = [n for n, k in zip(names, kept) if k]
  clf = model.named_steps["clf"]
  if hasattr(clf, "coef_"):
    return {"type": "standardised_coefficient", "values": dict(zip(kept_names, scaled_coef(model).tolist()))}
  if hasattr(clf, "feature_importances_"):
    return {"type": "impurity_importance", "values": dict(zip(kept_names, clf.feature_importances_.tolist()))}
  return None
