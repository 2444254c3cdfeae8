"""Metrics of every detection method from out-of-fold scores, with question-bootstrap intervals and paired
differences (docs/method.md §6.2-6.3); the statistics themselves are in `ghosttrack_jax.stats`."""

import numpy as np

from ghosttrack_jax import stats
from ghosttrack_jax.detect import oof

PRIMARY = "ghosttrack/logistic"


BASELINE_KINDS = ("baseline", "probe", "surface", "question_only", "unsupervised")
LENGTH_BASELINES = ("baseline/answer_tokens", "baseline/answer_words")
# A length baseline whose interval lies above this: the labels are readable from the answer's form
FORM_WARNING_AUROC = 0.65


def evaluate_scores(scores, labels, folds, thresholds, weights) -> tuple[dict, np.ndarray, np.ndarray]:
  """Metrics of one method. scores [R, N], folds [R, N], thresholds [R, K], weights [B, N].

  Returns (metrics, bootstrap AUROC [B], bootstrap AUPRC [B]); the metrics hold AUROC, AUPRC and PRR
  (the prediction-rejection ratio, stats.prr) with their question-bootstrap intervals.
  """
  labels = np.asarray(labels).astype(int)
  n_rep, n_folds = thresholds.shape
  aurocs = np.array([stats.auroc(scores[r], labels) for r in range(n_rep)])
  auprcs = np.array([stats.auprc(scores[r], labels) for r in range(n_rep)])
  auprcs_neg = np.array([stats.auprc(-scores[r], 1 - labels) for r in range(n_rep)])
  boot_auc = (
    stats.nanmean(np.stack([stats.auroc(scores[r], labels, weights) for r in range(n_rep)]), 0)
    if weights is not None
    else np.zeros(0)
  )
  boot_ap = (
    stats.nanmean(np.stack([stats.auprc(scores[r], labels, weights) for r in range(n_rep)]), 0)
    if weights is not None
    else np.zeros(0)
  )
  prrs = np.array([stats.prr(scores[r], labels) for r in range(n_rep)])
  boot_prr = (
    stats.nanmean(np.stack([stats.prr(scores[r], labels, weights) for r in range(n_rep)]), 0)
    if weights is not None
    else np.zeros(0)
  )
  fold_auc = [
    stats.auroc(scores[r][folds[r] == k], labels[folds[r] == k]) for r in range(n_rep) for k in range(n_folds)
  ]
  thr_rows = np.stack([thresholds[r][folds[r]] for r in range(n_rep)])
  at_thr = [stats.threshold_metrics(scores[r], labels, thr_rows[r]) for r in range(n_rep)]
  at_thr_mean = {k: float(np.mean([m[k] for m in at_thr])) for k in at_thr[0]}
  m = {
    "auroc": stats.finite_or_none(stats.nanmean(aurocs)),
    "auroc_ci": stats.percentile_ci(boot_auc),
    "auprc": stats.finite_or_none(stats.nanmean(auprcs)),
    "auprc_ci": stats.percentile_ci(boot_ap),
    "auprc_correct_positive": stats.finite_or_none(stats.nanmean(auprcs_neg)),
    "prr": stats.finite_or_none(stats.nanmean(prrs)),
    "prr_ci": stats.percentile_ci(boot_prr),
    "per_fold_auroc_mean": stats.finite_or_none(stats.nanmean(fold_auc)),
    "per_fold_auroc_sd": stats.finite_or_none(np.std(np.asarray(fold_auc)[np.isfinite(fold_auc)]))
    if np.isfinite(fold_auc).any()
    else None,
    "repeat_auroc_sd": stats.finite_or_none(np.std(aurocs[np.isfinite(aurocs)]))
    if n_rep > 1 and np.isfinite(aurocs).any()
    else None,
    "at_threshold": at_thr_mean,
    "threshold_rule": "max Youden J on inner-CV training-fold scores (detect)",
  }
  return m, boot_auc, boot_ap


def _delta(a, b, point_a, point_b) -> dict:
  d = np.asarray(a) - np.asarray(b)
  ci = stats.percentile_ci(d)
  return {
    "delta": stats.finite_or_none(point_a - point_b) if point_a is not None and point_b is not None else None,
    "ci": ci,
    "excludes_zero": bool(ci[0] is not None and (ci[0] > 0 or ci[1] < 0)),
  }


def evaluate_label_variants(info: dict, arr: dict, d: dict, n_bootstrap: int, seed: int) -> dict:
  """AUROC (with question-bootstrap CI) of the label-variant rows written by `detect` (detect.oof)."""
  weights = stats.group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  folds = d["folds"].astype(int)
  out = {"primary": info.get("primary"), "variants": {}}
  for lm, entry in info["variants"].items():
    e = {k: v for k, v in entry.items() if k != "methods"}
    e["methods"] = {}
    for m in entry.get("methods", []):
      y = arr["label__" + oof.safe_name(lm)]
      res, _, _ = evaluate_scores(
        arr["scores__" + m["key"]], y, folds, arr["thresholds__" + m["key"]], weights
      )
      e["methods"][m["method"]] = {k: res[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci")}
    out["variants"][lm] = e
  return out


def evaluate_all(d: dict, methods_meta: dict, n_bootstrap: int, seed: int) -> dict:
  """Metrics for every method of a detection `scores.npz` dict (see docs/DESIGN.md)."""
  names = [str(m) for m in d["methods"]]
  labels = d["label"].astype(int)
  folds = d["folds"].astype(int)
  weights = stats.group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  n1 = int(labels.sum())
  minority = min(n1, len(labels) - n1)
  out = {
    "n_examples": int(len(labels)),
    "n_hallucinated": n1,
    "n_correct": int(len(labels) - n1),
    "n_groups": int(len(np.unique(d["group_id"]))),
    "prevalence": float(labels.mean()),
    "n_repeats": int(folds.shape[0]),
    "n_folds": int(folds.max() + 1),
    "n_bootstrap": int(n_bootstrap),
    "bootstrap_unit": "question (group_id)",
    "warnings": [],
    "methods": {},
  }
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
    base = [
      (m["auroc"], n)
      for n, m in out["methods"].items()
      if m["kind"] in BASELINE_KINDS and m["auroc"] is not None
    ]
    if base:
      best = max(base)[1]
      out["best_baseline"] = best
      out["ghosttrack_minus_best_baseline"] = _delta(
        boots[PRIMARY][0], boots[best][0], gt["auroc"], out["methods"][best]["auroc"]
      )
    q_only = [
      (m["auroc"], n)
      for n, m in out["methods"].items()
      if m["kind"] == "question_only" and m["auroc"] is not None
    ]
    if q_only:
      best_q = max(q_only)[1]
      out["best_question_only"] = best_q
      out["ghosttrack_minus_question_only"] = _delta(
        boots[PRIMARY][0], boots[best_q][0], gt["auroc"], out["methods"][best_q]["auroc"]
      )
  # incremental rows: "X + question-only" against the question-only bar it extends, paired
  out["incremental_over_question"] = {
    name: {
      "with": name,
      "without": ref,
      **_delta(boots[name][0], boots[ref][0], out["methods"][name]["auroc"], out["methods"][ref]["auroc"]),
    }
    for name, ref in ((n, methods_meta["methods"].get(n, {}).get("compare_to")) for n in out["methods"])
    if ref and ref in boots
  }
  lengths = [out["methods"][n] for n in LENGTH_BASELINES if n in out["methods"]]
  form = [m for m in lengths if (m["auroc_ci"][0] or 0) > FORM_WARNING_AUROC]
  if form:
    out["form_warning"] = (
      f"the answer's length alone predicts the label (AUROC {max(m['auroc'] for m in form):.3f}, interval "
      f"above {FORM_WARNING_AUROC}): the labels are readable from the answers' form, so no detector's "
      "figure here shows that it reads whether an answer is true"
    )
    out["warnings"].insert(0, out["form_warning"])
  inc, ref = "combined/ghosttrack+scalar_baselines", "baseline/scalar_all"
  if inc in boots and ref in boots:
    out["incremental"] = {
      "with": inc,
      "without": ref,
      **_delta(boots[inc][0], boots[ref][0], out["methods"][inc]["auroc"], out["methods"][ref]["auroc"]),
    }
  claim = (
    out.get("ghosttrack_minus_best_baseline", {}).get("excludes_zero", False)
    and out["ghosttrack_minus_best_baseline"]["delta"] > 0
  )
  claim_inc = out.get("incremental", {}).get("excludes_zero", False) and out["incremental"]["delta"] > 0
  out["claim"] = {
    "ghosttrack_beats_best_baseline": bool(claim),
    "incremental_value": bool(claim_inc),
    "rule": "docs/method.md §6.3: paired-bootstrap 95% CI of the AUROC difference excludes 0",
  }
  return out


def relation_held_out(loro: dict, d: dict, n_bootstrap: int, seed: int) -> dict:
  """Metrics of the relation-held-out scores (detect's loro.npz): per method the AUROC, AUPRC and PRR over
  all held-out scores pooled, and the macro average of the per-relation AUROCs (relations with both
  classes), each with a question-bootstrap interval."""
  labels = d["label"].astype(int)
  if not np.array_equal(loro["folds"].shape[1:], labels.shape):
    raise ValueError("loro.npz and scores.npz disagree on the number of examples")
  weights = stats.group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  relation = np.asarray(loro["row_relation"])
  names = [str(r) for r in loro["relations"]]
  rows_of = {r: relation == r for r in names}
  rels = [r for r in names if len(np.unique(labels[rows_of[r]])) == 2]
  out = {
    "n_relations": len(names),
    "n_relations_both_classes": len(rels),
    "n_folds": int(loro["folds"].max() + 1),
    "methods": {},
  }
  for i, name in enumerate(str(m) for m in loro["methods"]):
    s = loro["scores"][i]
    m, _, _ = evaluate_scores(s, labels, loro["folds"], loro["thresholds"][i], weights)
    per = [stats.auroc(s[0][rows_of[r]], labels[rows_of[r]]) for r in rels]
    entry = {k: m[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci", "prr", "prr_ci")}
    entry["macro_auroc"] = stats.finite_or_none(float(np.mean(per))) if per else None
    if weights is not None and rels:
      boot = np.stack(
        [stats.auroc(s[0][rows_of[r]], labels[rows_of[r]], weights[:, rows_of[r]]) for r in rels]
      )
      entry["macro_auroc_ci"] = stats.percentile_ci(stats.nanmean(boot, 0))
    else:
      entry["macro_auroc_ci"] = [None, None]
    out["methods"][name] = entry
  return out


def _pair_weights(labels, weights):
  """Positive x negative pair weight of a row subset: n1 * n0 (a float, or [B] with bootstrap weights)."""
  if weights is None:
    return float(labels.sum() * (len(labels) - labels.sum()))
  return weights[:, labels == 1].sum(1) * weights[:, labels == 0].sum(1)


def per_relation(d: dict, relation, methods, n_bootstrap: int, seed: int, min_per_class: int) -> dict:
  """AUROC inside each relation, for `methods` (names in d["methods"]), on the saved out-of-fold scores.

  * `relations`: every relation with at least `min_per_class` answers in each class, its counts and each
    method's AUROC on its rows (mean over repeats);
  * `within`: per method, the within-relation AUROC: the share of (hallucinated, correct) pairs from
    the SAME relation that the method orders correctly, i.e. the per-relation AUROCs averaged with
    weights n1*n0, over every relation with both classes; with a question-bootstrap interval. A
    score fixed per relation gives 0.5; out-of-fold scores of a model that learns relation rates fall
    below it on small relations (a held-out hallucination leaves its relation's training rows one
    fewer), so read a method's figure against the relation-only control's.
  """
  names = [str(m) for m in d["methods"]]
  labels = d["label"].astype(int)
  relation = np.asarray(relation)
  weights = stats.group_bootstrap_weights(d["group_id"], n_bootstrap, seed) if n_bootstrap else None
  rels = sorted(set(relation.tolist()))
  out = {"min_per_class": int(min_per_class), "relations": {}, "within": {}}
  for name in methods:
    scores = d["scores"][names.index(name)]
    num, den, bnum, bden, used = 0.0, 0.0, 0.0, 0.0, 0
    for r in rels:
      rows = relation == r
      y = labels[rows]
      n1 = int(y.sum())
      n0 = int(len(y) - n1)
      if not (n1 and n0):
        continue
      used += 1
      auc = float(np.mean([stats.auroc(scores[k][rows], y) for k in range(len(scores))]))
      num, den = num + auc * n1 * n0, den + n1 * n0
      if weights is not None:
        w = weights[:, rows]
        b = stats.nanmean(np.stack([stats.auroc(scores[k][rows], y, w) for k in range(len(scores))]), 0)
        pw = _pair_weights(y, w)
        bnum, bden = bnum + np.nan_to_num(b) * pw, bden + pw
      if n1 >= min_per_class and n0 >= min_per_class:
        entry = out["relations"].setdefault(r, {"n_correct": n0, "n_hallucinated": n1, "auroc": {}})
        entry["auroc"][name] = auc
    boot = (
      np.asarray(bnum / np.where(np.asarray(bden) > 0, bden, np.nan)) if weights is not None else np.zeros(0)
    )
    out["within"][name] = {
      "auroc": stats.finite_or_none(num / den) if den else None,
      "auroc_ci": stats.percentile_ci(boot),
      "n_relations": used,
    }
  return out
