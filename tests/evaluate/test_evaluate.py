"""Evaluation statistics: AUROC/AUPRC against scikit-learn, question-level bootstrap, thresholds."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from synthetic_tables import tiny_config, write_synthetic

from ghosttrack_jax import stats
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import metrics
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.runtime import paths


def test_known_auroc():
  assert stats.auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
  assert stats.auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  assert stats.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
  # 3 positives vs 2 negatives: pairs won 4 of 6, one tie -> (4 + 0.5) / 6
  assert stats.auroc([0.9, 0.3, 0.5, 0.3, 0.1], [1, 1, 1, 0, 0]) == pytest.approx(5.5 / 6)
  assert np.isnan(stats.auroc([0.1, 0.2], [1, 1]))


def test_matches_sklearn_with_weights_and_ties():
  rng = np.random.default_rng(0)
  s = np.round(rng.normal(size=300), 1)  # many ties
  y = (rng.random(300) < 0.3).astype(int)
  w = rng.integers(0, 4, size=(5, 300))
  assert stats.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
  assert stats.auprc(s, y) == pytest.approx(average_precision_score(y, s))
  np.testing.assert_allclose(stats.auroc(s, y, w), [roc_auc_score(y, s, sample_weight=wi) for wi in w])
  np.testing.assert_allclose(
    stats.auprc(s, y, w), [average_precision_score(y, s, sample_weight=wi) for wi in w]
  )


def test_bootstrap_resamples_groups_not_rows():
  groups = np.repeat(np.arange(50), 3)
  w = stats.group_bootstrap_weights(groups, 100, seed=0)
  assert w.shape == (100, 150)
  for row in w:  # every row of a group gets the group's count; total = number of groups drawn x size
    assert (row.reshape(50, 3) == row.reshape(50, 3)[:, :1]).all()
    assert row.sum() == 150


def test_ci_contains_point_estimate():
  rng = np.random.default_rng(1)
  y = (rng.random(400) < 0.3).astype(int)
  s = rng.normal(size=400) + 0.8 * y
  folds = (np.arange(400) % 5)[None]
  w = stats.group_bootstrap_weights(np.arange(400), 500, seed=0)
  m, boot, _ = metrics.evaluate_scores(s[None], y, folds, np.zeros((1, 5)), w)
  lo, hi = m["auroc_ci"]
  assert lo <= m["auroc"] <= hi and hi - lo < 0.2
  assert m["auprc_ci"][0] <= m["auprc"] <= m["auprc_ci"][1]
  assert m["auroc"] == pytest.approx(roc_auc_score(y, s))


def test_choose_threshold_and_metrics():
  s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
  y = np.array([0, 0, 0, 1, 1, 1])
  t = stats.choose_threshold(s, y)
  assert t == 0.6
  m = stats.threshold_metrics(s, y, t)
  assert m["accuracy"] == 1.0 and m["f1"] == 1.0 and m["balanced_accuracy"] == 1.0
  assert stats.choose_threshold(s, np.ones(6)) == 0.5
  m = stats.threshold_metrics(s, y, np.array([0.05] * 6))
  assert m["recall"] == 1.0 and m["precision"] == 0.5


def test_evaluate_stage_on_synthetic(tmp_path):
  c = tiny_config()
  write_synthetic(c, str(tmp_path))
  detect_stage.run(c, str(tmp_path))
  evaluate_stage.run(c, str(tmp_path))
  path = os.path.join(paths.for_config(c, str(tmp_path)).evaluation, "nq_open", "metrics.json")
  m = json.load(open(path))
  gt = m["methods"]["ghosttrack/logistic"]
  assert gt["auroc_ci"][0] <= gt["auroc"] <= gt["auroc_ci"][1]
  assert (
    m["best_baseline"] in m["methods"] and m["methods"][m["best_baseline"]]["kind"] in metrics.BASELINE_KINDS
  )
  assert "incremental" in m and m["n_bootstrap"] == 200
  assert "competition_max" in m["degeneracy"]["ghosttrack"]["constant"]
  assert all("delta_vs_ghosttrack" in v for k, v in m["methods"].items() if k != "ghosttrack/logistic")
  assert m["answers"]["label_method"] == "containment"
  # the tracker setting chosen by inner CV finds the sweep with the stronger signal
  tuned = m["methods"]["ghosttrack/inner_cv_settings"]
  assert tuned["kind"] == "ghosttrack_tuned" and tuned["auroc"] > gt["auroc"]
  # the question-only controls ran on the same folds and GhostTrack is compared with the best of them
  assert {"question_only/relation", "question_only/relation_and_words"} <= set(m["methods"])
  assert m["best_question_only"].startswith("question_only/") and "ghosttrack_minus_question_only" in m
  within = m["per_relation"]["within"]["ghosttrack/logistic"]
  assert within["n_relations"] == 2 and within["auroc_ci"][0] <= within["auroc"] <= within["auroc_ci"][1]
  assert m["answers"]["relations"].keys() == {"country", "religion"}


def test_within_relation_auroc_sees_through_a_relation_detector():
  """A score that only recognises the relation looks good pooled and scores 0.5 within relations; a
  score that orders answers inside each relation keeps its AUROC there."""
  rng = np.random.default_rng(0)
  relation = np.array(["easy"] * 100 + ["hard"] * 100)
  label = np.concatenate([rng.random(100) < 0.2, rng.random(100) < 0.8]).astype(int)
  by_relation = (relation == "hard").astype(float)
  inside = label + rng.normal(0, 0.5, 200)
  d = {
    "methods": np.array(["relation_only", "inside"]),
    "scores": np.stack([by_relation, inside])[:, None, :],
    "label": label,
    "group_id": np.arange(200),
  }
  out = metrics.per_relation(
    d, relation, ["relation_only", "inside"], n_bootstrap=100, seed=0, min_per_class=10
  )
  assert stats.auroc(by_relation, label) > 0.75
  assert out["within"]["relation_only"]["auroc"] == pytest.approx(0.5)
  assert out["within"]["inside"]["auroc"] > 0.8
  assert set(out["relations"]) == {"easy", "hard"}
  assert out["relations"]["easy"]["auroc"]["relation_only"] == pytest.approx(0.5)
  lo, hi = out["within"]["inside"]["auroc_ci"]
  assert lo <= out["within"]["inside"]["auroc"] <= hi
