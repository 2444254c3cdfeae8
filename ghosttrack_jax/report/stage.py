"""Stage `report`: results/<model>/evaluation/report.{json,md,html} over every evaluated dataset.

The report states the mode (own-answer / given-text), model, dataset, label method, n per class, code
commit and data hashes; every AUROC is printed with its question-bootstrap 95 % interval and beside the
baselines (docs/method.md §6, "no number without its CI and its baselines"). Given-text sections are titled
"given-text mode". Contents:

  * the AUROC table (GhostTrack, its classifiers, reconstruction family, ablations and sweeps, every
    baseline and probe, combined rows) with AUPRC, balanced accuracy / F1 at training-fold thresholds,
    and the paired difference to GhostTrack;
  * the claim check (GhostTrack vs the strongest baseline; the incremental row) and the controls:
    GhostTrack minus the best question-only control, the per-relation and within-relation AUROCs,
    answer flags per class, and the hand label audit of docs/audits/ where one matches this run;
  * ROC curves, a forest plot of AUROC intervals, feature importances of the final detectors;
  * the degeneracy report (constant / near-constant metrics, effective rank);
  * the per-layer SAE quality table read from results/<model>/sae/ (a note when absent);
  * case studies: tracks across layers for a few correct and hallucinated answers (from the optional
    tracks.npz of the track stage);
  * a cross-model comparison when other models in the same workdir have evaluations.

The HTML is self-contained: plots are inline base64 PNGs (matplotlib, Agg backend), no external assets.
"""

import json
import logging
import os

from ghosttrack_jax.errors import GhostTrackError, IncompleteStoreError
from ghosttrack_jax.report import compare, dashboard, gather, plots, render
from ghosttrack_jax.runtime import atomic_io, paths


def build(config, workdir: str) -> tuple[dict, dict]:
  p = paths.for_config(config, workdir)
  datasets = gather.evaluated_datasets(p)
  if not datasets:
    raise IncompleteStoreError(f"no finished evaluation under {p.evaluation}: run the 'evaluate' stage first")
  figures = {}
  rep = {
    "model": config.model.name,
    "model_source": config.model.source,
    "code": gather.code_commit(),
    "config": json.loads(config.to_json_best_effort()),
    "datasets": {},
    "sae_quality": gather.read_sae_quality(config, workdir),
    "transfer": gather.transfer(config, workdir),
  }
  comparison = compare.gather([os.path.abspath(workdir)])
  if len(comparison["models"]) > 1:  # other models evaluated in the same workdir
    rep["cross_model"] = compare.summary(comparison)
    figures["cross_model"] = (comparison, compare.plots(comparison))
  for name in datasets:
    ds = gather.load_dataset_results(config, workdir, name)
    m = ds["metrics"]
    cases = gather.case_studies(ds, config.evaluate.n_case_studies)
    rep["datasets"][name] = {
      "mode": m.get("mode"),
      "mode_title": "given-text mode" if m.get("mode") == "given_text" else "own-answer mode",
      "label_method": (m.get("answers") or {}).get("label_method"),
      "n_examples": m["n_examples"],
      "n_correct": m["n_correct"],
      "n_hallucinated": m["n_hallucinated"],
      "n_groups": m["n_groups"],
      "prevalence": m["prevalence"],
      "n_folds": m["n_folds"],
      "n_repeats": m["n_repeats"],
      "n_bootstrap": m["n_bootstrap"],
      "answers": m.get("answers"),
      "methods": m["methods"],
      "best_baseline": m.get("best_baseline"),
      "ghosttrack_minus_best_baseline": m.get("ghosttrack_minus_best_baseline"),
      "incremental": m.get("incremental"),
      "best_question_only": m.get("best_question_only"),
      "ghosttrack_minus_question_only": m.get("ghosttrack_minus_question_only"),
      "per_relation": m.get("per_relation"),
      "incremental_over_question": m.get("incremental_over_question"),
      "relation_held_out": m.get("relation_held_out"),
      "not_run": gather.not_run(m),
      "label_audit": gather.label_audit(config.model.name, name, ds["examples"]),
      "association_per_layer": (ds["track_report"] or {}).get("association_per_layer"),
      "claim": m.get("claim"),
      "warnings": m.get("warnings", []),
      "label_variants": m.get("label_variants"),
      "degeneracy": {
        k: {kk: vv for kk, vv in v.items() if kk != "columns"} for k, v in (m.get("degeneracy") or {}).items()
      },
      "case_studies": [{k: v for k, v in c.items() if k != "index"} for c in cases],
    }
    figures[name] = {
      "roc": plots.plot_roc(ds),
      "forest": plots.plot_forest(m),
      "importances": plots.plot_importances(ds["detector"]) if "detector" in ds else None,
      "cases": [(c, plots.plot_case(ds["tracks"], c)) for c in cases],
    }
  return rep, figures


def _write_case_dashboards(config, workdir: str, out_dir: str, rep: dict, figures: dict) -> None:
  """Writes the interactive per-answer dashboard of every case study and records its relative path."""
  for name, d in rep["datasets"].items():
    for case in d["case_studies"]:
      rel = os.path.join("dashboards", name, f"{case['id']}.html")
      try:
        summary = dashboard.summary_from_outputs(config, workdir, case["id"], dataset=name)
      except (GhostTrackError, OSError, KeyError) as e:  # e.g. the example's tracks were not stored
        logging.warning("report: no dashboard for case %s: %s", case["id"], e)
        continue
      dashboard.write_dashboard(summary, os.path.join(out_dir, rel), title=f"{name}: {case['id']}")
      case["dashboard"] = rel
      for c, _ in figures[name].get("cases", []):
        if c["id"] == case["id"]:
          c["dashboard"] = rel


def run(config, workdir: str) -> str:
  """Writes report.{json,md,html}; returns the HTML path. Always rebuilt (it is cheap)."""
  p = paths.for_config(config, workdir)
  rep, figures = build(config, workdir)
  os.makedirs(p.evaluation, exist_ok=True)
  _write_case_dashboards(config, workdir, p.evaluation, rep, figures)
  atomic_io.atomic_write_json(os.path.join(p.evaluation, "report.json"), rep)
  md, page = render.to_markdown(rep), render.to_html(rep, figures)
  if "cross_model" in figures:
    comparison, comparison_figures = figures["cross_model"]
    md += "\n" + compare.to_markdown(comparison)
    page = page.replace(
      "</body></html>", compare.to_html(comparison, comparison_figures) + "\n</body></html>"
    )
  atomic_io.atomic_write_text(os.path.join(p.evaluation, "report.md"), md)
  html_path = os.path.join(p.evaluation, "report.html")
  atomic_io.atomic_write_text(html_path, page)
  logging.info("report: written to %s (also report.md and report.json)", html_path)
  return html_path
