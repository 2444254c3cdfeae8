"""Stage `evaluate`: out-of-fold scores -> metrics with question-level bootstrap CIs (method.md §6.2-6.3).

For every method scored by `detect` (GhostTrack, its other classifiers, the reconstruction family, the
ablations and sweeps, every baseline and probe, the combined rows), all on the same saved folds:

  * pooled out-of-fold AUROC (positive = hallucinated) and AUPRC, the prevalence beside AUPRC as its
    chance level, and AUPRC with "correct" as the positive class;
  * 95 % percentile intervals from `config.evaluate.n_bootstrap` resamples of QUESTIONS (groups), never
    rows: a resample draws groups with replacement and weights every row by its group's count;
  * accuracy, balanced accuracy, precision, recall and F1 at thresholds chosen on the training folds
    only (by `detect`, from inner cross-validated training scores, see `choose_threshold`);
  * per-fold AUROC mean ± sd (and the sd across repeats when R > 1);
  * paired bootstrap differences on the same resamples: every method minus GhostTrack, GhostTrack minus
    the strongest baseline (highest point AUROC among baselines, probes and surface baselines), and
    the incremental row (GhostTrack + scalar baselines minus the scalar baselines alone);
  * a degeneracy report of every GhostTrack-style feature set (constant / near-constant metrics,
    effective rank), recomputed from the feature table.

With R > 1 repeats, a metric is the mean over repeats of the pooled metric, also inside each resample.

Writes `results/<model>/evaluation/<dataset>/metrics.json` and `DONE`.
"""

import logging
import os
import re

import numpy as np

from ghosttrack_jax import io_utils, paths
from ghosttrack_jax.errors import IncompleteStoreError

PRIMARY = "ghosttrack/logistic"
BASELINE_KINDS = ("baseline", "probe", "surface")


# ---- statistics ------------------------------------------------------------------------------

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
  return {"accuracy": (tp + tn) / max(len(y), 1), "balanced_accuracy": (rec + spec) / 2,
          "precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
          "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ci(values) -> list:
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


def _f(x):
  return None if x is None or not np.isfinite(x) else float(x)


# ---- per-method evaluation -------------------------------------------------------------------

def evaluate_scores(scores, labels, folds, thresholds, weights) -> tuple[dict, np.ndarray, np.ndarray]:
  """Metrics of one method. scores [R, N], folds [R, N], thresholds [R, K], weights [B, N].

  Returns (metrics, bootstrap AUROC [B], bootstrap AUPRC [B]).
  """
  labels = np.asarray(labels).astype(int)
  n_rep, n_folds = thresholds.shape
  aurocs = np.array([auroc(scores[r], labels) for r in range(n_rep)])
  auprcs = np.array([auprc(scores[r], labels) for r in range(n_rep)])
  auprcs_neg = np.array([auprc(-scores[r], 1 - labels) for r in range(n_rep)])
  boot_auc = nanmean(np.stack([auroc(scores[r], labels, weights) for r in range(n_rep)]), 0) \
      if weights is not None else np.zeros(0)
  boot_ap = nanmean(np.stack([auprc(scores[r], labels, weights) for r in range(n_rep)]), 0) \
      if weights is not None else np.zeros(0)
  fold_auc = [auroc(scores[r][folds[r] == k], labels[folds[r] == k])
              for r in range(n_rep) for k in range(n_folds)]
  thr_rows = np.stack([thresholds[r][folds[r]] for r in range(n_rep)])
  at_thr = [threshold_metrics(scores[r], labels, thr_rows[r]) for r in range(n_rep)]
  at_thr_mean = {k: float(np.mean([m[k] for m in at_thr])) for k in at_thr[0]}
  m = {
      "auroc": _f(nanmean(aurocs)),
      "auroc_ci": _ci(boot_auc),
      "auprc": _f(nanmean(auprcs)),
      "auprc_ci": _ci(boot_ap),
      "auprc_correct_positive": _f(nanmean(auprcs_neg)),
      "per_fold_auroc_mean": _f(nanmean(fold_auc)),
      "per_fold_auroc_sd": _f(np.std(np.asarray(fold_auc)[np.isfinite(fold_auc)])) if np.isfinite(fold_auc).any() else None,
      "repeat_auroc_sd": _f(np.std(aurocs[np.isfinite(aurocs)])) if n_rep > 1 and np.isfinite(aurocs).any() else None,
      "at_threshold": at_thr_mean,
      "threshold_rule": "max Youden J on inner-CV training-fold scores (detect)",
  }
  return m, boot_auc, boot_ap


def _delta(a, b, point_a, point_b) -> dict:
  d = np.asarray(a) - np.asarray(b)
  ci = _ci(d)
  return {"delta": _f(point_a - point_b) if point_a is not None and point_b is not None else None,
          "ci": ci, "excludes_zero": bool(ci[0] is not None and (ci[0] > 0 or ci[1] < 0))}


def degeneracy(features_path: str, meta: dict) -> dict:
  """Degeneracy report (divergence.degeneracy_report) of each 26-metric feature set in the table."""
  from ghosttrack_jax import divergence  # pylint: disable=g-import-not-at-top
  out = {}
  with np.load(features_path, allow_pickle=False) as z:
    for name, info in meta.get("feature_sets", {}).items():
      if info.get("per_layer") or info.get("kind") not in ("ghosttrack", "ablation", "sweep",
                                                               "reconstruction"):
        continue
      x = z["X__" + name].astype(np.float64)
      rep = divergence.degeneracy_report(x, names=info["columns"])
      out[name] = {k: rep[k] for k in ("constant", "near_constant", "effective_rank_99", "n_examples")}
      out[name]["columns"] = rep["columns"]
  return out


def run(config, workdir: str) -> None:
  p = paths.for_config(config, workdir)
  dataset = config.qa.dataset
  det_dir = os.path.join(p.detection, dataset)
  out_dir = os.path.join(p.evaluation, dataset)
  if io_utils.is_done(out_dir):
    logging.info("evaluate: %s is complete; skipping", out_dir)
    return
  if not io_utils.is_done(det_dir):
    raise IncompleteStoreError(f"{det_dir} has no DONE marker: run the 'detect' stage first")
  with np.load(os.path.join(det_dir, "scores.npz"), allow_pickle=False) as z:
    d = {k: z[k] for k in z.files}
  methods_meta = io_utils.read_json(os.path.join(det_dir, "methods.json"))
  metrics = evaluate_all(d, methods_meta, config.evaluate.n_bootstrap, config.evaluate.seed)
  tr_dir = os.path.join(p.tracking, dataset)
  feat_meta_path = os.path.join(tr_dir, "features.json")
  if os.path.exists(feat_meta_path):
    metrics["degeneracy"] = degeneracy(os.path.join(tr_dir, "features.npz"), io_utils.read_json(feat_meta_path))
  ans_manifest = os.path.join(p.answers(dataset), "manifest.json")
  if os.path.exists(ans_manifest):
    am = io_utils.read_json(ans_manifest)
    metrics["answers"] = {k: am.get(k) for k in ("mode", "label_method", "label_rates", "n_examples",
                                                 "n_excluded", "excluded_reasons", "n_questions",
                                                 "warnings", "prompt", "data_files", "flags")}
  lv = os.path.join(det_dir, "label_variants.json")
  if os.path.exists(lv):
    metrics["label_variants"] = evaluate_label_variants(det_dir, d, config.evaluate.n_bootstrap,
                                                        config.evaluate.seed)
  metrics["dataset"] = dataset
  metrics["model"] = config.model.name
  metrics["mode"] = methods_meta.get("mode", "own_answer")
  io_utils.atomic_write_json(os.path.join(out_dir, "metrics.json"), metrics)
  io_utils.write_done(out_dir, {"n_methods": len(metrics["methods"])})
  prim = metrics["methods"].get(PRIMARY, {})
  logging.info("evaluate: %s AUROC %s CI %s -> %s", PRIMARY, prim.get("auroc"), prim.get("auroc_ci"), out_dir)


def evaluate_label_variants(det_dir: str, d: dict, n_bootstrap: int, seed: int) -> dict:
  """AUROC (with question-bootstrap CI) of the label-variant rows written by `detect`."""
  info = io_utils.read_json(os.path.join(det_dir, "label_variants.json"))
  with np.load(os.path.join(det_dir, "label_variants.npz"), allow_pickle=False) as z:
    arr = {k: z[k] for k in z.files}
  weights = group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  folds = d["folds"].astype(int)
  out = {"primary": info.get("primary"), "variants": {}}
  for lm, entry in info["variants"].items():
    e = {k: v for k, v in entry.items() if k != "methods"}
    e["methods"] = {}
    for m in entry.get("methods", []):
      y = arr["label__" + re.sub(r"[^A-Za-z0-9_.+-]", "_", lm)]
      res, _, _ = evaluate_scores(arr["scores__" + m["key"]], y, folds, arr["thresholds__" + m["key"]], weights)
      e["methods"][m["method"]] = {k: res[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci")}
    out["variants"][lm] = e
  return out


def evaluate_all(d: dict, methods_meta: dict, n_bootstrap: int, seed: int) -> dict:
  """Metrics for every method of a detection `scores.npz` dict (see docs/DESIGN.md)."""
  names = [str(m) for m in d["methods"]]
  labels = d["label"].astype(int)
  folds = d["folds"].astype(int)
  weights = group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  n1 = int(labels.sum())
  minority = min(n1, len(labels) - n1)
  out = {"n_examples": int(len(labels)), "n_hallucinated": n1, "n_correct": int(len(labels) - n1),
         "n_groups": int(len(np.unique(d["group_id"]))), "prevalence": float(labels.mean()),
         "n_repeats": int(folds.shape[0]), "n_folds": int(folds.max() + 1),
         "n_bootstrap": int(n_bootstrap), "bootstrap_unit": "question (group_id)", "warnings": [],
         "methods": {}}
  if minority < 100:
    out["warnings"].append(f"minority class has {minority} examples (< 100): intervals are wide")
  if minority == 0:
    out["warnings"].append("only one class present: AUROC/AUPRC are undefined")
  boots = {}
  for i, name in enumerate(names):
    m, b_auc, b_ap = evaluate_scores(d["scores"][i], labels, folds, d["thresholds"][i], weights)
    info = methods_meta["methods"].get(name, {})
    m["kind"] = info.get("kind", "other")
    m["label"] = info.get("label", name)
    m["degenerate_folds"] = info.get("degenerate_folds", 0)
    if m["degenerate_folds"] and minority > 0:
      out["warnings"].append(f"{name}: {m['degenerate_folds']} fold fits saw one class or no usable column")
    out["methods"][name] = m
    boots[name] = (b_auc, b_ap)
  if PRIMARY in boots:
    gt = out["methods"][PRIMARY]
    for name, m in out["methods"].items():
      if name != PRIMARY:
        m["delta_vs_ghosttrack"] = _delta(boots[name][0], boots[PRIMARY][0], m["auroc"], gt["auroc"])
    base = [(m["auroc"], n) for n, m in out["methods"].items()
            if m["kind"] in BASELINE_KINDS and m["auroc"] is not None]
    if base:
      best = max(base)[1]
      out["best_baseline"] = best
      out["ghosttrack_minus_best_baseline"] = _delta(boots[PRIMARY][0], boots[best][0], gt["auroc"],
                                                     out["methods"][best]["auroc"])
  inc, ref = "combined/ghosttrack+scalar_baselines", "baseline/scalar_all"
  if inc in boots and ref in boots:
    out["incremental"] = {"with": inc, "without": ref, **_delta(
        boots[inc][0], boots[ref][0], out["methods"][inc]["auroc"], out["methods"][ref]["auroc"])}
  claim = out.get("ghosttrack_minus_best_baseline", {}).get("excludes_zero", False) and \
      out["ghosttrack_minus_best_baseline"]["delta"] > 0
  claim_inc = out.get("incremental", {}).get("excludes_zero", False) and out["incremental"]["delta"] > 0
  out["claim"] = {"ghosttrack_beats_best_baseline": bool(claim), "incremental_value": bool(claim_inc),
                  "rule": "method.md §6.3: paired-bootstrap 95% CI of the AUROC difference excludes 0"}
  return out
