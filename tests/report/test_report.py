"""Report: contents of report.{json,md,html} on synthetic detection/evaluation outputs."""

import json
import os

import numpy as np
from synthetic_tables import tiny_config, write_synthetic

from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import metrics
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.report import plots
from ghosttrack_jax.report import stage as report_stage
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.train import quality


def _run(wd, name, sae=False):
  c = tiny_config(name)
  write_synthetic(c, wd, seed=hash(name) % 100)
  if sae:
    d = paths.for_config(c, wd).sae_results
    rows = [
      {"layer": l, "l0": 20.0 + l, "fvu": 0.1, "dead_fraction": 0.01, "ce_loss_recovered": 0.9}
      for l in range(3)
    ]
    quality.write_tables(
      d,
      quality.Report(rows=rows, log_density=np.zeros((3, 4)), histograms={}, notes=[]),
      meta={"model": name},
    )
    atomic_io.write_done(d)
  detect_stage.run(c, wd)
  evaluate_stage.run(c, wd)
  return c


def test_report_contents(tmp_path):
  wd = str(tmp_path)
  _run(wd, "model_b")
  c = _run(wd, "model_a", sae=True)
  html_path = report_stage.run(c, wd)
  ev = paths.for_config(c, wd).evaluation
  assert html_path == os.path.join(ev, "report.html")
  rep = json.load(open(os.path.join(ev, "report.json")))
  d = rep["datasets"]["nq_open"]
  assert d["mode_title"] == "own-answer mode" and d["label_method"] == "containment"
  assert d["n_correct"] + d["n_hallucinated"] == d["n_examples"] == 120
  assert metrics.PRIMARY in d["methods"] and d["best_baseline"]
  assert "competition_max" in d["degeneracy"]["ghosttrack"]["constant"]
  assert len(d["case_studies"]) >= 2 and {cs["label"] for cs in d["case_studies"]} == {0, 1}
  assert rep["sae_quality"]["rows"][0]["l0"] == 20.0
  assert set(rep["cross_model"]["models"]) == {"model_a", "model_b"}
  md = open(os.path.join(ev, "report.md")).read()
  assert "AUROC table" in md and "95% CI" in md and "ghosttrack/logistic" in md and "Across models" in md
  assert "probe/raw_resid_best_layer" in md and "SAE quality per layer" in md
  assert "Label-method sensitivity" in md and "| exact |" in md
  lv = d["label_variants"]["variants"]["exact"]
  assert lv["n_hallucinated"] > d["n_hallucinated"] and "ghosttrack/logistic" in lv["methods"]
  html = open(html_path).read()
  assert html.count("data:image/png;base64,") >= 4  # roc, forest, importances, case studies
  assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
  gt = d["methods"][metrics.PRIMARY]
  assert f"{gt['auroc']:.3f}" in md and f"[{gt['auroc_ci'][0]:.3f}, {gt['auroc_ci'][1]:.3f}]" in md


def test_report_without_sae_and_tracks(tmp_path):
  wd = str(tmp_path)
  c = tiny_config("m")
  write_synthetic(c, wd, with_tracks=False)
  os.remove(
    os.path.join(paths.for_config(c, wd).tracking, "nq_open", "features.json")
  )  # no degeneracy source
  atomic_io.atomic_write_json(
    os.path.join(paths.for_config(c, wd).tracking, "nq_open", "features.json"),
    {
      "schema_version": 1,
      "mode": "own_answer",
      "n_layers": 3,
      "feature_sets": {
        "ghosttrack": {"columns": [f"m{i}" for i in range(26)], "per_layer": False, "kind": "ghosttrack"}
      },
    },
  )
  detect_stage.run(c, wd)
  evaluate_stage.run(c, wd)
  report_stage.run(c, wd)
  md = open(os.path.join(paths.for_config(c, wd).evaluation, "report.md")).read()
  assert "no SAE quality report found" in md and "Across models" not in md


def test_roc_points():
  fpr, tpr = plots.roc_points(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
  assert list(fpr) == [0, 0, 0.5, 0.5, 1] and list(tpr) == [0, 0.5, 0.5, 1, 1]
