"""Stage `report`: results/<model>/evaluation/report.{json,md,html} over every evaluated dataset.

The report states the mode (own-answer / given-text), model, dataset, label method, n per class, code
commit and data hashes; every AUROC is printed with its question-bootstrap 95 % interval and beside the
baselines (method.md §6, "no number without its CI and its baselines"). Given-text sections are titled
"given-text mode". Contents:

  * the AUROC table (GhostTrack, its classifiers, reconstruction family, ablations and sweeps, every
    baseline and probe, combined rows) with AUPRC, balanced accuracy / F1 at training-fold thresholds,
    and the paired difference to GhostTrack;
  * the claim check (GhostTrack vs the strongest baseline; the incremental row);
  * ROC curves, a forest plot of AUROC intervals, feature importances of the final detectors;
  * the degeneracy report (constant / near-constant metrics, effective rank);
  * the per-layer SAE quality table read from results/<model>/sae/ (a note when absent);
  * case studies: tracks across layers for a few correct and hallucinated answers (from the optional
    tracks.npz of the track stage);
  * a cross-model comparison when other models in the same workdir have evaluations.

The HTML is self-contained: plots are inline base64 PNGs (matplotlib, Agg backend), no external assets.
"""

import base64
import glob
import html
import io
import json
import logging
import os
import subprocess

import numpy as np

from ghosttrack_jax import evaluate, io_utils, paths
from ghosttrack_jax.errors import GhostTrackError, IncompleteStoreError

KIND_ORDER = ("ghosttrack", "ghosttrack_classifier", "reconstruction", "ablation", "sweep", "baseline",
              "probe", "surface", "combined", "other")
MAX_TRACKS_PLOTTED = 40  # case-study plots: the longest (then strongest) tracks only
SAE_COLUMNS = ("layer", "l0", "fvu", "mse", "cosine", "dead_fraction", "never_fired_eval", "dense_fraction",
               "dense_latents", "ce_loss_recovered", "delta_lm_loss", "kl", "input_scale")


# ---- gathering -------------------------------------------------------------------------------

def code_commit() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return {"commit": commit or None, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def _scalar(v) -> bool:
  return isinstance(v, (int, float, bool)) or v is None


def read_sae_quality(sae_dir: str) -> dict:
  """Per-layer SAE quality rows from whatever JSON the SAE stage left in `sae_dir` (tolerant reader).

  Accepts a list of per-layer dicts, a dict with a "layers" list/dict, or a dict keyed by layer.
  Returns {"rows": [...], "columns": [...], "source": file} or {"note": why not}.
  """
  files = sorted(glob.glob(os.path.join(sae_dir, "*.json")))
  files = [f for f in files if os.path.basename(f) not in ("DONE",)]
  if not files:
    return {"note": f"no SAE quality report found in {sae_dir} (train stage not run or wrote none)"}
  for f in files:
    try:
      obj = io_utils.read_json(f)
    except (OSError, ValueError):
      continue
    rows = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
      rows = obj
    elif isinstance(obj, dict):
      layers = obj.get("layers") or obj.get("per_layer")
      if isinstance(layers, list) and layers and isinstance(layers[0], dict):
        rows = layers
      elif isinstance(layers, dict):
        rows = [{"layer": k, **v} for k, v in layers.items() if isinstance(v, dict)]
      elif all(isinstance(v, dict) for v in obj.values()) and obj:
        rows = [{"layer": k, **v} for k, v in obj.items()]
    if rows:
      flat = [{k: v for k, v in r.items() if _scalar(v)} for r in rows]
      cols = [c for c in SAE_COLUMNS if any(c in r for r in flat)]
      if len(cols) < 4:
        cols += sorted({k for r in flat for k in r} - set(cols))
      notes = obj.get("notes", []) if isinstance(obj, dict) else []
      return {"rows": flat, "columns": cols[:12], "source": os.path.relpath(f, sae_dir),
              "notes": [str(n) for n in notes] if isinstance(notes, list) else [],
              "targets": obj.get("targets") if isinstance(obj, dict) else None}
  return {"note": f"SAE files in {sae_dir} have no per-layer table this report can read"}


def _load_dataset(p: paths.ModelPaths, dataset: str) -> dict:
  ev = os.path.join(p.evaluation, dataset)
  d = {"dataset": dataset, "metrics": io_utils.read_json(os.path.join(ev, "metrics.json"))}
  det = os.path.join(p.detection, dataset)
  sp = os.path.join(det, "scores.npz")
  if os.path.exists(sp):
    with np.load(sp, allow_pickle=False) as z:
      d["scores"] = {k: z[k] for k in z.files}
  mp = os.path.join(det, "detector", "manifest.json")
  if os.path.exists(mp):
    d["detector"] = io_utils.read_json(mp)
  tp = os.path.join(p.tracking, dataset, "tracks.npz")
  if os.path.exists(tp):
    with np.load(tp, allow_pickle=False) as z:
      d["tracks"] = {k: z[k] for k in z.files}
  exp = os.path.join(p.answers(dataset), "examples.jsonl")
  if os.path.exists(exp):
    with open(exp, encoding="utf-8") as f:
      d["examples"] = {e["id"]: e for e in (json.loads(line) for line in f if line.strip())}
  return d


def evaluated_datasets(p: paths.ModelPaths) -> list[str]:
  if not os.path.isdir(p.evaluation):
    return []
  return sorted(n for n in os.listdir(p.evaluation) if io_utils.is_done(os.path.join(p.evaluation, n)))


def cross_model(workdir: str) -> list[dict]:
  """One row per (model, dataset) with a finished evaluation under `workdir/results/`."""
  rows = []
  for mpath in sorted(glob.glob(os.path.join(workdir, "results", "*", "evaluation", "*", "metrics.json"))):
    if not io_utils.is_done(os.path.dirname(mpath)):
      continue
    m = io_utils.read_json(mpath)
    gt = m["methods"].get(evaluate.PRIMARY, {})
    best = m.get("best_baseline")
    bm = m["methods"].get(best, {}) if best else {}
    rows.append({"model": m.get("model"), "dataset": m.get("dataset"), "mode": m.get("mode"),
                 "n": m["n_examples"], "n_correct": m["n_correct"], "n_hallucinated": m["n_hallucinated"],
                 "ghosttrack_auroc": gt.get("auroc"), "ghosttrack_ci": gt.get("auroc_ci"),
                 "best_baseline": best, "best_baseline_auroc": bm.get("auroc"),
                 "best_baseline_ci": bm.get("auroc_ci"),
                 "delta": m.get("ghosttrack_minus_best_baseline", {}).get("delta"),
                 "delta_ci": m.get("ghosttrack_minus_best_baseline", {}).get("ci")})
  return rows


# ---- formatting ------------------------------------------------------------------------------

def fmt(x, nd=3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def fmt_ci(ci, nd=3) -> str:
  if not ci or ci[0] is None:
    return "n/a"
  return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def method_rows(metrics: dict) -> list[dict]:
  rows = []
  for name, m in metrics["methods"].items():
    dv = m.get("delta_vs_ghosttrack") or {}
    rows.append({"method": name, "kind": m.get("kind", "other"), "label": m.get("label", name),
                 "auroc": m["auroc"], "auroc_ci": m["auroc_ci"], "auprc": m["auprc"], "auprc_ci": m["auprc_ci"],
                 "auprc_neg": m.get("auprc_correct_positive"),
                 "balanced_accuracy": m["at_threshold"]["balanced_accuracy"], "f1": m["at_threshold"]["f1"],
                 "per_fold": (m["per_fold_auroc_mean"], m["per_fold_auroc_sd"]),
                 "delta": dv.get("delta"), "delta_ci": dv.get("ci"), "delta_sig": dv.get("excludes_zero")})
  rows.sort(key=lambda r: (KIND_ORDER.index(r["kind"]) if r["kind"] in KIND_ORDER else 99))
  return rows


def _md_table(header, rows) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(out)


def _html_table(header, rows) -> str:
  h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
  return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


AUROC_HEADER = ["method", "kind", "AUROC", "95% CI", "AUPRC", "AUPRC CI", "AUPRC (correct = +)", "bal. acc.",
                "F1", "per-fold AUROC", "Δ vs GhostTrack", "Δ CI"]


def auroc_table(metrics: dict) -> list[list]:
  out = []
  for r in method_rows(metrics):
    pf = r["per_fold"]
    out.append([r["method"], r["kind"], fmt(r["auroc"]), fmt_ci(r["auroc_ci"]), fmt(r["auprc"]),
                fmt_ci(r["auprc_ci"]), fmt(r["auprc_neg"]), fmt(r["balanced_accuracy"]), fmt(r["f1"]),
                f"{fmt(pf[0])} ± {fmt(pf[1])}", fmt(r["delta"]) + (" *" if r["delta_sig"] else ""),
                fmt_ci(r["delta_ci"])])
  return out


# ---- plots -----------------------------------------------------------------------------------

def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  _plt().close(fig)
  return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_points(scores, labels):
  order = np.argsort(-np.asarray(scores), kind="mergesort")
  s, y = np.asarray(scores)[order], np.asarray(labels)[order].astype(bool)
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
  tpr = np.r_[0, np.cumsum(y)[last] / max(y.sum(), 1)]
  fpr = np.r_[0, np.cumsum(~y)[last] / max((~y).sum(), 1)]
  return fpr, tpr


def plot_roc(ds: dict) -> str | None:
  sc = ds.get("scores")
  if sc is None or len(np.unique(sc["label"])) < 2:
    return None
  metrics = ds["metrics"]
  names = [str(n) for n in sc["methods"]]
  want = [evaluate.PRIMARY, "ghosttrack/random_forest", metrics.get("best_baseline"), "baseline/scalar_all",
          "baseline/mean_nll", "probe/raw_resid_best_layer", "combined/ghosttrack+scalar_baselines"]
  want = [w for i, w in enumerate(want) if w and w in names and w not in want[:i]]
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.2, 5))
  for w in want:
    fpr, tpr = roc_points(sc["scores"][names.index(w)][0], sc["label"])
    ax.plot(fpr, tpr, lw=2 if w == evaluate.PRIMARY else 1.2,
            label=f"{w} ({fmt(metrics['methods'][w]['auroc'])})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false-positive rate")
  ax.set_ylabel("true-positive rate (hallucinated = positive)")
  ax.set_title(f"ROC, out-of-fold (repeat 0): {ds['dataset']}")
  ax.legend(fontsize=7, loc="lower right")
  return _png(fig)


def plot_forest(metrics: dict) -> str | None:
  rows = [r for r in method_rows(metrics) if r["auroc"] is not None]
  if not rows:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1))
  y = np.arange(len(rows))[::-1]
  for yi, r in zip(y, rows):
    lo, hi = r["auroc_ci"] if r["auroc_ci"][0] is not None else (r["auroc"], r["auroc"])
    color = "C3" if r["method"] == evaluate.PRIMARY else ("C0" if r["kind"].startswith("ghosttrack") else "C7")
    ax.plot([lo, hi], [yi, yi], color=color, lw=2)
    ax.plot(r["auroc"], yi, "o", color=color)
  ax.axvline(0.5, color="k", ls=":", lw=0.8)
  ax.set_yticks(y)
  ax.set_yticklabels([r["method"] for r in rows], fontsize=7)
  ax.set_xlabel("AUROC with 95% question-bootstrap interval")
  return _png(fig)


def plot_importances(detector: dict) -> str | None:
  panels = [(k, v["importances"]) for k, v in detector.get("classifiers", {}).items() if v.get("importances")]
  if not panels:
    return None
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 6), squeeze=False)
  for ax, (name, imp) in zip(axes[0], panels):
    items = sorted(imp["values"].items(), key=lambda kv: abs(kv[1]))
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set_title(f"{name}: {imp['type'].replace('_', ' ')}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
  return _png(fig)


def case_studies(ds: dict, n_per_class: int) -> list[dict]:
  """Up to n examples per class that have tracks: confident and wrong detector picks included."""
  tr, ex = ds.get("tracks"), ds.get("examples") or {}
  if tr is None:
    return []
  sc = ds.get("scores")
  oof = {}
  if sc is not None:
    names = [str(n) for n in sc["methods"]]
    if evaluate.PRIMARY in names:
      oof = dict(zip(sc["example_id"].astype(str), sc["scores"][names.index(evaluate.PRIMARY)][0]))
  picked = {0: [], 1: []}
  for i, eid in enumerate(tr["example_id"].astype(str)):
    e = ex.get(eid)
    if e is None or len(picked[e["label"]]) >= n_per_class:
      continue
    picked[e["label"]].append({"index": i, "id": eid, "question": e["question"], "answer": e["answer_text"],
                               "gold": e.get("gold", []), "label": e["label"], "score": oof.get(eid)})
  return picked[0] + picked[1]


def plot_case(tr: dict, case: dict) -> str:
  i = case["index"]
  m = int(tr["n_tracks"][i]) if "n_tracks" in tr else tr["act"].shape[1]
  act, birth, death = tr["act"][i, :m], tr["birth"][i, :m], tr["death"][i, :m]
  n_layers = act.shape[-1]
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 3.2))
  alive_len = np.where(birth >= 0, np.where(death >= 0, death, n_layers - 1) - birth + 1, 0)
  order = np.lexsort((-act.max(axis=1), -alive_len))[:MAX_TRACKS_PLOTTED]  # longest, then strongest
  for t in sorted(order):
    if birth[t] < 0:
      continue
    last = death[t] if death[t] >= 0 else n_layers - 1
    xs = np.arange(birth[t], last + 1)
    ax.plot(xs, act[t, xs], lw=0.9, alpha=0.8, marker=".", ms=4)
    if death[t] >= 0:
      ax.plot(last, act[t, last], "kx", ms=3)
  ax.set_xlabel("layer")
  ax.set_ylabel("track activation")
  ax.set_xlim(-0.5, n_layers - 0.5)
  verdict = "hallucinated" if case["label"] else "correct"
  shown = f"{len(order)} longest of {m} tracks" if m > len(order) else f"{m} tracks"
  ax.set_title(f"{verdict}; P(halluc.)={fmt(case['score'], 2)}; {shown}; dot = observation, x = death",
               fontsize=9)
  return _png(fig)


# ---- assembly --------------------------------------------------------------------------------

def build(config, workdir: str) -> tuple[dict, dict]:
  p = paths.for_config(config, workdir)
  datasets = evaluated_datasets(p)
  if not datasets:
    raise IncompleteStoreError(f"no finished evaluation under {p.evaluation}: run the 'evaluate' stage first")
  rep = {"model": config.model.name, "model_source": config.model.source, "code": code_commit(),
         "config": json.loads(config.to_json_best_effort()), "datasets": {},
         "sae_quality": read_sae_quality(p.sae_results), "cross_model": cross_model(os.path.abspath(workdir))}
  plots = {}
  for name in datasets:
    ds = _load_dataset(p, name)
    m = ds["metrics"]
    cases = case_studies(ds, config.evaluate.get("n_case_studies", 3))
    rep["datasets"][name] = {
        "mode": m.get("mode"), "mode_title": "given-text mode" if m.get("mode") == "given_text" else
        "own-answer mode", "label_method": (m.get("answers") or {}).get("label_method"),
        "n_examples": m["n_examples"], "n_correct": m["n_correct"], "n_hallucinated": m["n_hallucinated"],
        "n_groups": m["n_groups"], "prevalence": m["prevalence"], "n_folds": m["n_folds"],
        "n_repeats": m["n_repeats"], "n_bootstrap": m["n_bootstrap"], "answers": m.get("answers"),
        "methods": m["methods"], "best_baseline": m.get("best_baseline"),
        "ghosttrack_minus_best_baseline": m.get("ghosttrack_minus_best_baseline"),
        "incremental": m.get("incremental"), "claim": m.get("claim"), "warnings": m.get("warnings", []),
        "label_variants": m.get("label_variants"),
        "degeneracy": {k: {kk: vv for kk, vv in v.items() if kk != "columns"}
                       for k, v in (m.get("degeneracy") or {}).items()},
        "case_studies": [{k: v for k, v in c.items() if k != "index"} for c in cases]}
    plots[name] = {"roc": plot_roc(ds), "forest": plot_forest(m),
                   "importances": plot_importances(ds["detector"]) if "detector" in ds else None,
                   "cases": [(c, plot_case(ds["tracks"], c)) for c in cases]}
  return rep, plots


def _sae_table(sq: dict) -> tuple[list, list] | None:
  if "rows" not in sq:
    return None
  cols = sq["columns"]
  return cols, [[fmt(r.get(c), 4) if isinstance(r.get(c), float) else r.get(c, "") for c in cols]
                for r in sq["rows"]]


CROSS_HEADER = ["model", "dataset", "mode", "n (correct / halluc.)", "GhostTrack AUROC", "95% CI",
                "best baseline", "its AUROC", "95% CI", "Δ", "Δ CI"]


def _cross_rows(rows):
  return [[r["model"], r["dataset"], r["mode"], f"{r['n']} ({r['n_correct']} / {r['n_hallucinated']})",
           fmt(r["ghosttrack_auroc"]), fmt_ci(r["ghosttrack_ci"]), r["best_baseline"] or "n/a",
           fmt(r["best_baseline_auroc"]), fmt_ci(r["best_baseline_ci"]), fmt(r["delta"]), fmt_ci(r["delta_ci"])]
          for r in rows]


LV_HEADER = ["label method", "n (correct / halluc.)", "method", "AUROC", "95% CI"]


def _label_variant_rows(d: dict) -> list[list]:
  rows = []
  for lm, e in ((d.get("label_variants") or {}).get("variants") or {}).items():
    n = f"{e['n_correct'] + e['n_hallucinated']} ({e['n_correct']} / {e['n_hallucinated']})"
    if e.get("skipped"):
      rows.append([lm, n, "skipped: " + e["skipped"], "n/a", "n/a"])
    for name, m in e.get("methods", {}).items():
      rows.append([lm, n, name, fmt(m["auroc"]), fmt_ci(m["auroc_ci"])])
  return rows


def _claim_text(d: dict) -> str:
  g = d.get("ghosttrack_minus_best_baseline")
  parts = []
  if d["n_correct"] == 0 or d["n_hallucinated"] == 0:
    parts.append("Only one class is present: no detector can be evaluated on this run.")
  if g:
    if d["claim"]["ghosttrack_beats_best_baseline"]:
      verdict = "GhostTrack beats it (CI above 0)"
    elif g["ci"][1] is not None and g["ci"][1] < 0:
      verdict = "GhostTrack is worse than it (CI below 0)"
    else:
      verdict = "no evidence of a difference (CI includes 0)"
    parts.append(f"Strongest baseline: {d['best_baseline']}. AUROC(GhostTrack) − AUROC(baseline) = "
                 f"{fmt(g['delta'])} {fmt_ci(g['ci'])}: {verdict}.")
  inc = d.get("incremental")
  if inc and inc["delta"] is None:
    parts.append("Incremental value undefined (AUROC undefined).")
  elif inc:
    parts.append(f"Incremental: {inc['with']} − {inc['without']} = {fmt(inc['delta'])} {fmt_ci(inc['ci'])}"
                 + (" (CI excludes 0)." if d["claim"]["incremental_value"] else " (CI includes 0)."))
  return " ".join(parts) or "GhostTrack or baselines missing: no comparison possible."


def _summary_lines(rep: dict, name: str, d: dict) -> list[str]:
  a = d.get("answers") or {}
  lines = [f"Mode: **{d['mode_title']}**. Model `{rep['model']}` ({rep['model_source']}), dataset `{name}`, "
           f"label method `{d['label_method']}`.",
           f"Examples: {d['n_examples']} ({d['n_correct']} correct, {d['n_hallucinated']} hallucinated; "
           f"prevalence {fmt(d['prevalence'])} = AUPRC chance level; {fmt(1 - d['prevalence'])} for AUPRC with "
           f"correct = +), {d['n_groups']} question groups, "
           f"{d['n_folds']}-fold grouped CV × {d['n_repeats']} repeat(s), {d['n_bootstrap']} question "
           "resamples for the intervals."]
  if a.get("label_rates"):
    rates = ", ".join(f"{k}: {v['n_correct']} correct" for k, v in a["label_rates"].items())
    lines.append(f"Label rates under every method: {rates}.")
  if a.get("n_excluded"):
    lines.append(f"Excluded before folding: {a['n_excluded']} ({a.get('excluded_reasons')}).")
  return lines


def to_markdown(rep: dict) -> str:
  out = [f"# GhostTrack report: {rep['model']}", "",
         f"Code commit `{rep['code']['commit']}`" + (" (uncommitted changes)" if rep["code"]["dirty"] else "") + "."]
  for name, d in rep["datasets"].items():
    out += ["", f"## {name} — {d['mode_title']}", ""] + _summary_lines(rep, name, d)
    out += ["", _claim_text(d), ""]
    for w in d["warnings"]:
      out.append(f"> warning: {w}")
    out += ["", f"### AUROC table ({d['mode_title']}; positive class = hallucinated)", "",
            _md_table(AUROC_HEADER, auroc_table({"methods": d["methods"]})),
            "", "Δ marked * when its paired-bootstrap 95% CI excludes 0. Thresholds for balanced accuracy / F1 "
            "were chosen on training folds only.", ""]
    lv = _label_variant_rows(d)
    if lv:
      out += ["### Label-method sensitivity (same folds)", "", _md_table(LV_HEADER, lv), ""]
    if d["degeneracy"]:
      out += ["### Degeneracy", ""]
      out += [_md_table(["feature set", "constant", "near-constant", "effective rank (99%)"],
                        [[k, ", ".join(v["constant"]) or "none", ", ".join(v["near_constant"]) or "none",
                          v["effective_rank_99"]] for k, v in d["degeneracy"].items()]), ""]
    if d["case_studies"]:
      out += ["### Case studies", ""]
      out += [_md_table(["id", "label", "P(halluc.)", "question", "answer", "gold"],
                        [[c["id"], "hallucinated" if c["label"] else "correct", fmt(c["score"], 2), c["question"],
                          c["answer"], "; ".join(c["gold"][:3])] for c in d["case_studies"]]), ""]
  out += ["## SAE quality per layer", ""]
  t = _sae_table(rep["sae_quality"])
  out += [_md_table(*t) if t else f"_{rep['sae_quality'].get('note')}_", ""]
  out += [f"- {n}" for n in rep["sae_quality"].get("notes", [])]
  if rep["sae_quality"].get("targets"):
    out += [f"- targets: {json.dumps(rep['sae_quality']['targets'])}"]
  if len(rep["cross_model"]) > 1:
    out += ["## Across models", "", _md_table(CROSS_HEADER, _cross_rows(rep["cross_model"])), ""]
  return "\n".join(out) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#eee}.warn{color:#a40}img{max-width:100%}.mode{background:#ffe;padding:4px}")


def to_html(rep: dict, plots: dict) -> str:
  e = html.escape
  out = [f"<!doctype html><html><head><meta charset='utf-8'><title>GhostTrack report: {e(rep['model'])}</title>"
         f"<style>{_CSS}</style></head><body>", f"<h1>GhostTrack report: {e(rep['model'])}</h1>",
         f"<p>Code commit <code>{e(str(rep['code']['commit']))}</code>"
         + (" (uncommitted changes)" if rep["code"]["dirty"] else "") + ".</p>"]
  img = lambda b64, alt: f"<img alt='{e(alt)}' src='data:image/png;base64,{b64}'>" if b64 else ""
  for name, d in rep["datasets"].items():
    pl = plots.get(name, {})
    out.append(f"<h2>{e(name)} — <span class='mode'>{e(d['mode_title'])}</span></h2>")
    out += [f"<p>{e(line).replace('**', '')}</p>" for line in _summary_lines(rep, name, d)]
    out.append(f"<p><b>{e(_claim_text(d))}</b></p>")
    out += [f"<p class='warn'>warning: {e(w)}</p>" for w in d["warnings"]]
    out.append(f"<h3>AUROC table ({e(d['mode_title'])}; positive class = hallucinated)</h3>")
    out.append(_html_table(AUROC_HEADER, auroc_table({"methods": d["methods"]})))
    out.append("<p>Δ marked * when its paired-bootstrap 95% CI excludes 0. Thresholds for balanced accuracy / "
               "F1 were chosen on training folds only.</p>")
    out.append(img(pl.get("roc"), "ROC curves") + img(pl.get("forest"), "AUROC intervals"))
    if pl.get("importances"):
      out += ["<h3>Feature importances (final detectors, all rows)</h3>", img(pl["importances"], "importances")]
    lv = _label_variant_rows(d)
    if lv:
      out += ["<h3>Label-method sensitivity (same folds)</h3>", _html_table(LV_HEADER, lv)]
    if d["degeneracy"]:
      out.append("<h3>Degeneracy</h3>")
      out.append(_html_table(["feature set", "constant", "near-constant", "effective rank (99%)"],
                             [[k, ", ".join(v["constant"]) or "none", ", ".join(v["near_constant"]) or "none",
                               v["effective_rank_99"]] for k, v in d["degeneracy"].items()]))
    if pl.get("cases"):
      out.append("<h3>Case studies: tracks across layers</h3>")
      for c, b64 in pl["cases"]:
        link = (f' <a href="{e(c["dashboard"])}">interactive dashboard</a>' if c.get("dashboard") else "")
        out.append(f"<p><b>Q:</b> {e(c['question'])}<br><b>A:</b> {e(c['answer'])} "
                   f"(<i>{'hallucinated' if c['label'] else 'correct'}</i>; gold: {e('; '.join(c['gold'][:3]))})"
                   f"{link}</p>")
        out.append(img(b64, f"tracks of {c['id']}"))
  out.append("<h2>SAE quality per layer</h2>")
  t = _sae_table(rep["sae_quality"])
  out.append(_html_table(*t) if t else f"<p><i>{e(rep['sae_quality'].get('note', ''))}</i></p>")
  notes = rep["sae_quality"].get("notes", [])
  if notes:
    out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
  if rep["sae_quality"].get("targets"):
    out.append(f"<p>targets: {e(json.dumps(rep['sae_quality']['targets']))}</p>")
  if len(rep["cross_model"]) > 1:
    out += ["<h2>Across models</h2>", _html_table(CROSS_HEADER, _cross_rows(rep["cross_model"]))]
  out.append("</body></html>")
  return "\n".join(out)


def _write_case_dashboards(config, workdir: str, out_dir: str, rep: dict, plots: dict) -> None:
  """Writes the interactive per-answer dashboard of every case study and records its relative path."""
  from ghosttrack_jax import dashboard  # pylint: disable=import-outside-toplevel
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
      for c, _ in plots[name].get("cases", []):
        if c["id"] == case["id"]:
          c["dashboard"] = rel


def run(config, workdir: str) -> str:
  """Writes report.{json,md,html}; returns the HTML path. Always rebuilt (it is cheap)."""
  p = paths.for_config(config, workdir)
  rep, plots = build(config, workdir)
  os.makedirs(p.evaluation, exist_ok=True)
  _write_case_dashboards(config, workdir, p.evaluation, rep, plots)
  io_utils.atomic_write_json(os.path.join(p.evaluation, "report.json"), rep)
  io_utils.atomic_write_text(os.path.join(p.evaluation, "report.md"), to_markdown(rep))
  html_path = os.path.join(p.evaluation, "report.html")
  io_utils.atomic_write_text(html_path, to_html(rep, plots))
  logging.info("report: written to %s (also report.md and report.json)", html_path)
  return html_path
