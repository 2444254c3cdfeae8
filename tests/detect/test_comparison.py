"""The field's comparison rows on a synthetic table: unsupervised scores, position and semantic-entropy
probes, the question-only bar and incremental rows, leave-one-relation-out, PRR, transfer across sets."""

import os

import numpy as np
import pytest
from synthetic_tables import tiny_config, write_synthetic

from ghosttrack_jax import stats
from ghosttrack_jax.detect import cv, methods, oof
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.evaluate import transfer
from ghosttrack_jax.runtime import atomic_io


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("cmp"))
  c = tiny_config()
  y = write_synthetic(c, wd, n=160, n_relations=4)
  detect_stage.run(c, wd)
  evaluate_stage.run(c, wd)
  return c, wd, y


def _scores(c, wd):
  d = oof.load_scores(oof.directory(c, wd))
  return {str(n): d["scores"][i] for i, n in enumerate(d["methods"])}, d


def test_unsupervised_scores_are_the_column_with_its_fixed_sign(evaluated):
  c, wd, y = evaluated
  scores, d = _scores(c, wd)
  data = methods.load_feature_data(c, wd)
  se = data.sets["question_scores"][:, data.columns("question_scores").index("semantic_entropy")]
  pt = data.sets["question_scores"][:, data.columns("question_scores").index("p_true")]
  np.testing.assert_array_equal(scores["unsupervised/semantic_entropy"][0], se)
  np.testing.assert_array_equal(scores["unsupervised/p_false"][0], -pt)  # never fit: no sign learned
  assert stats.auroc(scores["unsupervised/p_false"][0], y) > 0.7
  sum_nll = data.sets["scalar_baselines"][:, data.columns("scalar_baselines").index("sum_nll")]
  np.testing.assert_array_equal(scores["unsupervised/max_sequence_probability"][0], sum_nll)


def test_position_probes_find_their_layer_and_tbg_is_a_control(evaluated):
  c, wd, y = evaluated
  scores, _ = _scores(c, wd)
  meta = oof.load_methods(oof.directory(c, wd))["methods"]
  assert meta["probe/tbg_best_layer"]["kind"] == "question_only"
  assert stats.auroc(scores["probe/ans_last_best_layer"][0], y) > 0.8
  layers = [ch["layer"] for ch in meta["probe/ans_last_best_layer"]["choices"]]
  assert layers.count(2) >= 2  # the informative layer, chosen inside training folds
  rng = [ch["layers"] for ch in meta["probe/ans_last_layer_range"]["choices"]]
  assert all(len(r) == 3 and r == sorted(r) for r in rng)  # 5 wanted, 3 layers exist
  assert abs(stats.auroc(scores["probe/tbg_best_layer"][0], y) - 0.5) < 0.2


def test_semantic_entropy_probe_never_sees_the_labels(evaluated, monkeypatch):
  c, wd, y = evaluated
  data = methods.load_feature_data(c, wd)
  spec = next(m for m in methods.plan_methods(data, c) if m.name == "probe/sep_ans_last_best_layer")
  seen = []
  real = cv.classifiers.fit_or_prior
  monkeypatch.setattr(cv.classifiers, "fit_or_prior", lambda make, x, t: seen.append(t) or real(make, x, t))
  train = np.arange(100)
  cv.fit_with_selection(spec, data, train, data.label, data.group_id, c.evaluate, seed=0)
  se = data.sets["question_scores"][train, data.columns("question_scores").index("semantic_entropy")]
  np.testing.assert_array_equal(seen[-1], cv.binarise(se))  # the final fit's target
  assert not np.array_equal(seen[-1], data.label[train])


def test_binarise_splits_low_from_high():
  v = np.r_[np.full(10, 0.1), np.full(5, 2.0), 2.2]
  assert cv.binarise(v).tolist() == [0] * 10 + [1] * 6
  assert cv.binarise(np.ones(4)).tolist() == [0] * 4


def test_relation_folds_hold_each_relation_out_once():
  data = methods.FeatureData({}, {"feature_sets": {}}, [], [], [], np.zeros((1, 0)), ["x"] * 20)
  data.relation = np.array(list("aaaaaaaabbbbccdefghi"))
  folds = cv.relation_folds(data, 3, seed=0)[0]
  for r in set(data.relation):
    assert len(set(folds[data.relation == r])) == 1
  assert sorted(np.bincount(folds)) == [6, 6, 8]  # balanced: the largest relation alone, the rest dealt
  exact = cv.relation_folds(data, 0)[0]
  assert exact.max() + 1 == 9 and cv.relation_folds(data, 50)[0].tolist() == exact.tolist()


def test_leave_one_relation_out_never_trains_on_the_held_out_relation(evaluated, monkeypatch):
  c, wd, y = evaluated
  data = methods.load_feature_data(c, wd)
  folds = cv.relation_folds(data)
  assert folds.max() + 1 == 4
  spec = next(m for m in methods.plan_methods(data, c) if m.name == "ghosttrack/logistic")
  trained_on = []
  real = cv.fit_with_selection
  monkeypatch.setattr(
    cv, "fit_with_selection", lambda s, d, tr, *a, **k: trained_on.append(tr) or real(s, d, tr, *a, **k)
  )
  res = cv.cross_validate(spec, data, c.evaluate, folds=folds)
  assert len(trained_on) == 4
  for f, tr in enumerate(trained_on):
    assert not np.isin(tr, np.flatnonzero(folds[0] == f)).any()
    assert set(data.relation[tr]) == set(data.relation) - {sorted(set(data.relation))[f]}
  assert res["scores"].shape == (1, len(y))


def test_metrics_hold_prr_loro_incremental_rows(evaluated):
  c, wd, y = evaluated
  m = evaluate_stage.load_metrics(evaluate_stage.directory(c, wd))
  gt = m["methods"]["ghosttrack/logistic"]
  assert gt["prr"] is not None and gt["prr_ci"][0] < gt["prr"] < gt["prr_ci"][1]
  loro = m["relation_held_out"]
  assert (
    loro["n_relations"] == 4 and loro["n_folds"] == 4
  )  # relation_folds 10 > 4 relations: one each and "question_only/relation" in loro["methods"]
  # a held-out relation is never seen in training: the relation one-hot cannot rank anything
  assert loro["methods"]["question_only/relation"]["macro_auroc"] == pytest.approx(0.5)
  assert loro["methods"]["ghosttrack/logistic"]["auroc"] > 0.7
  inc = m["incremental_over_question"]
  assert set(inc) >= {"incremental/ghosttrack+question", "incremental/semantic_entropy+question"}
  assert all(v["without"] == "question_only/relation_and_familiarity" for v in inc.values())
  assert inc["incremental/ghosttrack+question"]["delta"] > 0
  # the synthetic answers of hallucinated rows are longer (1-3 words against 1): form predicts the label
  assert m["methods"]["baseline/answer_words"]["auroc_ci"][0] > 0.65
  assert m["warnings"][0] == m["form_warning"] and "length alone predicts the label" in m["form_warning"]


def test_transfer_between_sets(tmp_path):
  wd = str(tmp_path)
  for name, seed in (("nq_open", 1), ("squad", 2)):
    c = tiny_config(dataset=name)
    write_synthetic(c, wd, n=120, seed=seed)
    detect_stage.run(c, wd)
    evaluate_stage.run(c, wd)
  out = transfer.run(c, wd, ["nq_open", "squad"])
  assert transfer.load(c, wd) == out
  gt = out["methods"]["ghosttrack/logistic"]
  assert gt["nq_open"]["nq_open"]["in_set_cross_validation"]
  assert gt["nq_open"]["squad"]["auroc"] > 0.75 and gt["squad"]["nq_open"]["auroc"] > 0.75
  assert gt["nq_open"]["squad"]["n_train"] == 120
  se = out["methods"]["unsupervised/semantic_entropy"]
  # nothing is fit: the score of a set is the same whichever set it was "fit" on
  assert se["nq_open"]["squad"]["auroc"] == pytest.approx(se["squad"]["squad"]["auroc"])


def test_report_shows_the_comparison(evaluated):
  from ghosttrack_jax.report import stage as report_stage
  from ghosttrack_jax.runtime import paths

  c, wd, _ = evaluated
  report_stage.run(c, wd)
  md = open(os.path.join(paths.for_config(c, wd).evaluation, "report.md"), encoding="utf-8").read()
  for text in (
    "| PRR |",
    "unsupervised/semantic_entropy",
    "Relation held out (4 relations",
    "Incremental over the question-only bar",
    "probe/sep_ans_last_best_layer",
    "> warning: the answer's length alone",
  ):
    assert text in md, text
  assert md.index("> warning: the answer's length alone") < md.index("### AUROC table")


def test_a_resumed_detect_reuses_only_parts_made_with_the_same_settings(tmp_path):
  """A killed detect resumes from its finished methods, but not from parts made under other CV settings
  (here the searched C values): those are recomputed, never mixed in."""
  wd = str(tmp_path)
  c = tiny_config()
  write_synthetic(c, wd, n=90, n_relations=3)
  c.evaluate.ablations = False
  c.evaluate.logistic_cs = (0.01,)
  detect_stage.run(c, wd)
  out = oof.directory(c, wd)
  atomic_io.clear_done(out)  # as if killed after every method's part was saved
  c.evaluate.logistic_cs = (10.0,)
  detect_stage.run(c, wd)
  chosen = {ch["C"] for m in oof.load_methods(out)["methods"].values() for ch in m["choices"] if "C" in ch}
  assert 10.0 in chosen and 0.01 not in chosen  # no part fit under the old C values was reused
  atomic_io.clear_done(out)
  parts = os.path.join(out, "methods")
  written = {p: os.stat(os.path.join(parts, p)).st_mtime_ns for p in os.listdir(parts)}
  detect_stage.run(c, wd)  # same settings and table: every part is reused, none rewritten
  assert written == {p: os.stat(os.path.join(parts, p)).st_mtime_ns for p in os.listdir(parts)}
  assert atomic_io.is_done(out)
