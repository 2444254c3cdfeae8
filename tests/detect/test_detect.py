"""Detect stage on a synthetic feature table: OOF scores, fold discipline, saved detector round trip."""

import os

import numpy as np
import pytest
from synthetic_tables import tiny_config, write_synthetic

from ghosttrack_jax import stats
from ghosttrack_jax.detect import classifiers, cv, detector, methods
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.errors import StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import divergence


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("det"))
  c = tiny_config()
  y = write_synthetic(c, wd)
  detect_stage.run(c, wd)
  return c, wd, y


def test_outputs_and_scores(detected):
  c, wd, y = detected
  d = os.path.join(paths.for_config(c, wd).detection, "nq_open")
  with np.load(os.path.join(d, "scores.npz"), allow_pickle=False) as z:
    names = list(z["methods"])
    scores, thr = z["scores"], z["thresholds"]
    assert np.array_equal(z["label"], y)
  for m in (
    "ghosttrack/logistic",
    "ghosttrack/random_forest",
    "reconstruction/logistic",
    "ghosttrack_feature_id/logistic",
    "baseline/answer_tokens",
    "baseline/scalar_all",
    "probe/raw_resid_best_layer",
    "probe/raw_resid_all_layers",
    "probe/sae_pooled_best_layer",
    "surface/bag_of_words",
    "combined/ghosttrack+scalar_baselines",
  ):
    assert m in names, m
  assert scores.shape == (len(names), 1, len(y)) and thr.shape == (len(names), 1, 3)
  auc = {n: stats.auroc(scores[i, 0], y) for i, n in enumerate(names)}
  assert auc["ghosttrack/logistic"] > 0.75  # signal in entropy_mean
  assert auc["probe/raw_resid_best_layer"] > 0.8
  assert abs(auc["ghosttrack_feature_id/logistic"] - 0.5) < 0.25  # no signal
  meta = atomic_io.read_json(os.path.join(d, "methods.json"))
  layers = [ch["layer"] for ch in meta["methods"]["probe/raw_resid_best_layer"]["choices"]]
  assert layers.count(1) >= 2  # the informative layer is found inside training folds
  csv = open(os.path.join(d, "predictions.csv")).read().splitlines()
  assert csv[0] == "method,example_id,group_id,repeat,fold,split,score,label"
  assert len(csv) == 1 + len(names) * len(y) and all(",test," in line for line in csv[1:])


def test_threshold_uses_training_rows_only(detected):
  c, wd, _ = detected
  data = methods.load_feature_data(c, wd)
  spec = methods.Method("ghosttrack/logistic", "ghosttrack", "", "logistic", (("ghosttrack", None),))
  train = np.flatnonzero(data.folds[0] != 0)
  test = np.flatnonzero(data.folds[0] == 0)
  fit1 = cv.fit_with_selection(spec, data, train, data.label, data.group_id, c.evaluate, 0)
  label2 = data.label.copy()
  label2[test] = 1 - label2[test]  # scramble the held-out fold completely
  data.sets["ghosttrack"] = data.sets["ghosttrack"].copy()
  data.sets["ghosttrack"][test] = 1e3
  fit2 = cv.fit_with_selection(spec, data, train, label2, data.group_id, c.evaluate, 0)
  assert fit1.threshold == fit2.threshold and fit1.choice == fit2.choice


def test_final_detector_round_trip(detected):
  c, wd, _ = detected
  det = detector.Detector.for_config(c, wd)
  assert det.feature_names == list(divergence.METRIC_NAMES)
  data = methods.load_feature_data(c, wd)
  x = data.sets["ghosttrack"][:5].astype(np.float64)
  p = det.predict_proba(x)
  assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
  # the JSON parameters reproduce the scikit-learn pipeline fit the same way
  spec = methods.Method("g", "ghosttrack", "", "logistic", (("ghosttrack", None),))
  fit = cv.fit_with_selection(
    spec, data, np.arange(len(data.label)), data.label, data.group_id, c.evaluate, c.evaluate.seed
  )
  np.testing.assert_allclose(p, classifiers.proba(fit.model, x), rtol=1e-6)
  rf = detector.Detector.for_config(c, wd, classifier="random_forest")
  assert rf.predict_proba(x).shape == (5,)
  assert rf.importances()["type"] == "impurity_importance"
  imp = det.importances()["values"]
  assert "competition_max" not in imp  # constant column dropped
  assert max(imp, key=lambda k: abs(imp[k])) == "entropy_mean"
  with pytest.raises(StoreMismatchError):
    det.predict_proba(np.zeros((1, 25)))
  with pytest.raises(StoreMismatchError):
    det.predict_proba(x, feature_names=list(reversed(divergence.METRIC_NAMES)))
  d = os.path.join(paths.for_config(c, wd).detection, "nq_open", "detector")
  with pytest.raises(StoreMismatchError):
    detector.Detector.load(d, expect={"top_k": 50})


def test_single_class_fold_is_degenerate_not_crash():
  x = np.zeros((4, 3))
  model, degenerate = classifiers.fit_or_prior(
    lambda: classifiers.make_classifier("logistic"), x, np.ones(4, int)
  )
  assert degenerate and np.allclose(classifiers.proba(model, x), 1.0)


def test_rowspace_logistic_is_exact():
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import Pipeline
  from sklearn.preprocessing import StandardScaler

  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 300))
  y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
  xt = rng.normal(size=(10, 300))
  wide = Pipeline(
    [
      ("s", StandardScaler()),
      ("c", LogisticRegression(C=0.1, class_weight="balanced", tol=1e-10, max_iter=10000)),
    ]
  ).fit(x, y)
  ours = classifiers.make_classifier("logistic", 0.1)
  ours.named_steps["clf"].set_params(tol=1e-10)
  ours.fit(x, y)
  assert ours.named_steps["rowspace"].v_.shape == (300, 39)  # centred rows span 39 dimensions
  np.testing.assert_allclose(classifiers.proba(ours, xt), wide.predict_proba(xt)[:, 1], atol=1e-5)
  np.testing.assert_allclose(classifiers.scaled_coef(ours), wide.named_steps["c"].coef_[0], atol=1e-4)


def test_unfittable_fold_falls_back_to_prior():
  x = np.array(["a", "b", "c", "d"], dtype=object)  # single characters: CountVectorizer has no vocabulary
  spec = methods.Method("surface/bag_of_words", "surface", "", text_features="bow")
  model, degenerate = classifiers.fit_or_prior(lambda: spec.make(1.0), x, np.array([0, 1, 0, 1]))
  assert degenerate and np.allclose(classifiers.proba(model, x), 0.5)
