"""Report plots (matplotlib, Agg backend), each returned as a base64 PNG: ROC curves, the AUROC forest
plot, feature importances and the case-study tracks."""

import base64
import io

import matplotlib
import numpy as np

from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.report.render import fmt, method_rows

matplotlib.use("Agg")  # before pyplot: reports are written on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

MAX_TRACKS_PLOTTED = 40  # case-study plots: the longest (then strongest) tracks only


def png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  plt.close(fig)
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
  want = [
    metrics_lib.PRIMARY,
    "ghosttrack/random_forest",
    metrics.get("best_baseline"),
    "baseline/scalar_all",
    "baseline/mean_nll",
    "probe/raw_resid_best_layer",
    "combined/ghosttrack+scalar_baselines",
  ]
  want = [w for i, w in enumerate(want) if w and w in names and w not in want[:i]]
  fig, ax = plt.subplots(figsize=(5.2, 5))
  for w in want:
    fpr, tpr = roc_points(sc["scores"][names.index(w)][0], sc["label"])
    ax.plot(
      fpr,
      tpr,
      lw=2 if w == metrics_lib.PRIMARY else 1.2,
      label=f"{w} ({fmt(metrics['methods'][w]['auroc'])})",
    )
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false-positive rate")
  ax.set_ylabel("true-positive rate (hallucinated = positive)")
  ax.set_title(f"ROC, out-of-fold (repeat 0): {ds['dataset']}")
  ax.legend(fontsize=7, loc="lower right")
  return png(fig)


def plot_forest(metrics: dict) -> str | None:
  rows = [r for r in method_rows(metrics) if r["auroc"] is not None]
  if not rows:
    return None
  fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1))
  y = np.arange(len(rows))[::-1]
  for yi, r in zip(y, rows):
    lo, hi = r["auroc_ci"] if r["auroc_ci"][0] is not None else (r["auroc"], r["auroc"])
    color = (
      "C3" if r["method"] == metrics_lib.PRIMARY else ("C0" if r["kind"].startswith("ghosttrack") else "C7")
    )
    ax.plot([lo, hi], [yi, yi], color=color, lw=2)
    ax.plot(r["auroc"], yi, "o", color=color)
  ax.axvline(0.5, color="k", ls=":", lw=0.8)
  ax.set_yticks(y)
  ax.set_yticklabels([r["method"] for r in rows], fontsize=7)
  ax.set_xlabel("AUROC with 95% question-bootstrap interval")
  return png(fig)


def plot_importances(detector: dict) -> str | None:
  panels = [(k, v["importances"]) for k, v in detector.get("classifiers", {}).items() if v.get("importances")]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 6), squeeze=False)
  for ax, (name, imp) in zip(axes[0], panels):
    items = sorted(imp["values"].items(), key=lambda kv: abs(kv[1]))
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set_title(f"{name}: {imp['type'].replace('_', ' ')}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
  return png(fig)


def plot_case(tr: dict, case: dict) -> str:
  i = case["index"]
  m = int(tr["n_tracks"][i]) if "n_tracks" in tr else tr["act"].shape[1]
  act, birth, death = tr["act"][i, :m], tr["birth"][i, :m], tr["death"][i, :m]
  n_layers = act.shape[-1]
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
  ax.set_title(
    f"{verdict}; P(halluc.)={fmt(case['score'], 2)}; {shown}; dot = observation, x = death", fontsize=9
  )
  return png(fig)
