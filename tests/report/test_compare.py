"""The comparison across models (report.compare, tools/compare.py) on synthetic runs in two workdirs."""

import json

import numpy as np
import pytest
from synthetic_tables import tiny_config, write_synthetic

from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.evaluate import metrics
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.report import compare
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.tools import compare as compare_cli
from ghosttrack_jax.train import quality


def _run(workdir, name, seed, n_layers=None):
  c = tiny_config(name)
  write_synthetic(c, workdir, seed=seed)
  if n_layers:  # an SAE quality table of n_layers layers
    d = paths.for_config(c, workdir).sae_results
    rows = [
      {"layer": l, "l0": 20.0, "dead_fraction": 0.0, "fvu_robust": 0.1 + 0.01 * l, "ce_loss_recovered": 0.9}
      for l in range(n_layers)
    ]
    quality.write_tables(
      d,
      quality.Report(rows=rows, log_density=np.zeros((n_layers, 4)), histograms={}, notes=[]),
      meta={"model": name},
    )
    atomic_io.write_done(d)
  detect_stage.run(c, workdir)
  evaluate_stage.run(c, workdir)
  return c


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  a, b = str(tmp_path_factory.mktemp("a")), str(tmp_path_factory.mktemp("b"))
  _run(a, "model_a", 1, n_layers=3)
  _run(b, "model_b", 2)
  return a, b


def test_two_workdirs_side_by_side(two_runs, tmp_path):
  a, b = two_runs
  comp = compare.gather([a, b])
  assert list(comp["models"]) == ["model_a", "model_b"] and list(comp["datasets"]) == ["nq_open"]
  sae = comp["models"]["model_a"]["sae"]
  # A random model's block count is not known without its config: one past the table's last layer.
  assert sae["depth"] == [0.0, 0.5, 1.0] and sae["fvu_robust"] == pytest.approx([0.1, 0.11, 0.12])
  assert "sae" not in comp["models"]["model_b"] and "sae_note" in comp["models"]["model_b"]
  header, rows = compare.detection_rows(comp["datasets"]["nq_open"])
  assert header == ["method", "model_a: AUROC [95% CI]", "model_b: AUROC [95% CI]"]
  names = [r[0] for r in rows]
  assert names[0] == metrics.PRIMARY and names[-2:] == [
    "Δ GhostTrack − strongest baseline",
    "Δ GhostTrack − question-only control",
  ]
  per_model = comp["datasets"]["nq_open"]
  every = set().union(*(m["methods"] for m in per_model.values()))
  within = {f"within relation: {n}" for m in per_model.values() for n in m["per_relation"]["within"]}
  assert set(names[:-2]) == every | within  # every method of every metrics file, none invented
  best = per_model["model_a"]["best_baseline"]
  assert "(strongest baseline)" in rows[names.index(best)][1]
  gt = per_model["model_b"]["methods"][metrics.PRIMARY]
  assert rows[0][2].startswith(f"{gt['auroc']:.3f} [{gt['auroc_ci'][0]:.3f}, {gt['auroc_ci'][1]:.3f}]")

  html_path = compare_cli.write([a, b], str(tmp_path / "out"))
  page = open(html_path, encoding="utf-8").read()
  assert page.count("data:image/png;base64,") == 2  # per-depth panels, key methods
  assert "https://" not in page and "<script" not in page
  md = open(tmp_path / "out" / "compare.md", encoding="utf-8").read()
  assert md.startswith("# Across models") and "| model_a | FVU (robust) | 0.100 |" in md
  summary = json.load(open(tmp_path / "out" / "compare.json", encoding="utf-8"))
  assert summary["detection"]["nq_open"]["rows"][0][0] == metrics.PRIMARY


def test_the_same_model_in_two_workdirs_and_an_empty_one(two_runs, tmp_path):
  a, _ = two_runs
  other = str(tmp_path / "again")
  _run(other, "model_a", 3)
  labels = list(compare.gather([a, other])["models"])
  assert len(labels) == 2 and all(label.startswith("model_a (") for label in labels)
  with pytest.raises(ConfigError, match="no finished evaluation"):
    compare_cli.write([a, str(tmp_path / "empty")], str(tmp_path / "out"))
