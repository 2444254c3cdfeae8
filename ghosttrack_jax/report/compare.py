"""The comparison across models: every finished evaluation under one or more workdirs, side by side.

For each model: its shapes and SAEs, how many of its own answers are right; per relative depth (layer /
(blocks - 1), so models of different depth line up) the SAE quality of the train stage and the tracker's
association shares; and per dataset the detection table with every method each evaluation has (names
read from the metrics files, not a fixed list: new detectors appear as rows), each model's strongest
baseline and question-only control marked, and the two paired differences that carry the claim. Tables
in Markdown and HTML, plots as inline PNGs (matplotlib).

Used by the report stage (the "Across models" section, over the models of the run's workdir) and by
`python -m ghosttrack_jax.tools.compare --workdirs=A,B --out=DIR` (any number of finished workdirs).
Reads every file through its owner module; writes nothing itself.
"""

import glob
import html
import os

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.errors import ConfigError, GhostTrackError
from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.lm import shapes
from ghosttrack_jax.report import plots as plots_lib
from ghosttrack_jax.report import render
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import feature_table
from ghosttrack_jax.train import quality

plt = plots_lib.plt

DEPTH_BINS = 5  # relative-depth bins of the per-depth tables
SAE_METRICS = (  # (column of the SAE quality table, what the table calls it)
  ("fvu_robust", "FVU (robust)"),
  ("delta_lm_loss", "Δ LM loss (nats)"),
  ("ce_loss_recovered", "CE loss recovered"),
  ("never_fired_eval", "never fired"),
)


def _config_for(model: str, dataset: str):
  """A config naming `model` and `dataset`, for the owners' loaders (they locate files by these)."""
  c = config_lib.base_config()
  c.model.name, c.qa.dataset = model, dataset
  return c


def _n_blocks(manifest_model: dict, layers: list[int]) -> int:
  """The model's block count from its source (no weights loaded), else (a random model, whose shape the
  answers manifest does not record) one past its last layer."""
  c = config_lib.base_config().model
  c.family, c.source = manifest_model.get("family", "gpt2"), manifest_model.get("source", "")
  if c.source == "random":
    return max(layers) + 1
  try:
    return int(shapes.architecture(c).n_layers)
  except (ConfigError, GhostTrackError, OSError, KeyError):
    return max(layers) + 1


def _depth(layers, n_blocks: int) -> list[float]:
  return [l / max(n_blocks - 1, 1) for l in layers]


def _model_entry(workdir: str, model: str, dataset: str) -> dict:
  """What the comparison shows of one model: its source, block count and SAE quality table (when its
  train stage ran); `_add_dataset` adds each evaluated dataset's answers and tracking."""
  manifest = examples_lib.load_manifest(_config_for(model, dataset), workdir, dataset)
  entry = {"model": model, "workdir": workdir, **{k: manifest["model"].get(k) for k in ("source", "family")}}
  try:
    table = quality.load_table(paths.ModelPaths(workdir, model).sae_results)
  except GhostTrackError as e:
    entry["sae_note"], table = str(e), None
  layers = [int(r["layer"]) for r in table["layers"]] if table else []
  entry["n_blocks"] = _n_blocks(manifest["model"], layers or [0])
  if table:
    entry["sae"] = {
      "arch": table.get("arch"),
      "width": table.get("width"),
      "d_model": table.get("d_model"),
      "k": (table.get("config") or {}).get("sae", {}).get("k"),
      "layers": layers,
      "depth": _depth(layers, entry["n_blocks"]),
      **{col: [r.get(col) for r in table["layers"]] for col, _ in SAE_METRICS},
    }
  entry["datasets"] = {}
  return entry


def _add_dataset(entry: dict, dataset: str) -> None:
  """The answers (questions asked, non-answers left out) and the tracker's association shares of one
  evaluated dataset of the model."""
  config = _config_for(entry["model"], dataset)
  manifest = examples_lib.load_manifest(config, entry["workdir"], dataset)
  track = feature_table.load_report(feature_table.directory(config, entry["workdir"], dataset)) or {}
  assoc = track.get("association_per_layer") or []
  if assoc and not entry.get("sae"):  # no SAE table: the tracked layers bound the block count
    entry["n_blocks"] = max(
      entry["n_blocks"], _n_blocks(manifest["model"], [int(a["layer"]) + 1 for a in assoc])
    )
  layers = [int(a["layer"]) for a in assoc]  # transition l -> l + 1 sits at the depth of l
  entry["datasets"][dataset] = {
    "n_questions": manifest.get("n_questions"),
    "n_excluded": manifest.get("n_excluded"),
    "association": {
      "layers": layers,
      "depth": _depth(layers, entry["n_blocks"]),
      "accepted_share": [a.get("accepted_share") for a in assoc],
    }
    if assoc
    else None,
  }


def gather(workdirs) -> dict:
  """{"models": {label: entry}, "datasets": {dataset: {label: metrics}}} for every finished evaluation
  under `workdirs` (a model's label is its name, with the end of its workdir's path when two workdirs
  hold the same model)."""
  found = []
  for workdir in workdirs:
    workdir = os.path.abspath(workdir)
    for mpath in sorted(glob.glob(os.path.join(workdir, "results", "*", "evaluation", "*", "metrics.json"))):
      if atomic_io.is_done(os.path.dirname(mpath)):  # skip an evaluation still running (or killed)
        found.append((workdir, mpath))
  metrics = [evaluate_stage.load_metrics(os.path.dirname(m)) for _, m in found]
  workdirs_of: dict = {}
  for (workdir, _), m in zip(found, metrics):
    workdirs_of.setdefault(m["model"], set()).add(workdir)
  out = {"models": {}, "datasets": {}}
  for (workdir, _), m in zip(found, metrics):
    name = m["model"]
    label = name if len(workdirs_of[name]) == 1 else f"{name} ({os.path.join(*workdir.split(os.sep)[-2:])})"
    if label not in out["models"]:
      out["models"][label] = _model_entry(workdir, name, m["dataset"])
    _add_dataset(out["models"][label], m["dataset"])
    out["datasets"].setdefault(m["dataset"], {})[label] = m
  return out


def summary(comp: dict) -> dict:
  """The comparison as plain tables (what report.json and compare.json record)."""
  return {
    "models": comp["models"],
    "overview": dict(zip(("header", "rows"), model_rows(comp))),
    "per_depth": dict(zip(("header", "rows"), depth_rows(comp))),
    "detection": {
      ds: dict(zip(("header", "rows"), detection_rows(pm))) for ds, pm in comp["datasets"].items()
    },
  }


# ---- tables ----------------------------------------------------------------------------------------


def model_rows(comp: dict) -> tuple[list, list]:
  header = [
    "model",
    "source",
    "blocks",
    "SAE",
    "dataset",
    "answers (correct / halluc.)",
    "accuracy",
    "non-answers left out",
  ]
  rows = []
  for ds, per_model in comp["datasets"].items():
    for label, m in per_model.items():
      e = comp["models"][label]
      sae = e.get("sae")
      rows.append(
        [
          label,
          e.get("source") or "",
          e["n_blocks"],
          f"{sae['arch']} {sae['d_model']} → {sae['width']}" + (f", k {sae['k']}" if sae.get("k") else "")
          if sae
          else "n/a",
          ds,
          f"{m['n_examples']} ({m['n_correct']} / {m['n_hallucinated']})",
          render.fmt(m["n_correct"] / m["n_examples"] if m["n_examples"] else None),
          e["datasets"][ds]["n_excluded"],
        ]
      )
  return header, rows


def _binned(depth, values) -> list:
  """Mean of `values` in each of DEPTH_BINS equal relative-depth bins (None where a bin is empty)."""
  out = []
  for b in range(DEPTH_BINS):
    lo, hi = b / DEPTH_BINS, (b + 1) / DEPTH_BINS
    vals = [
      v for d, v in zip(depth, values) if v is not None and (lo <= d < hi or (b == DEPTH_BINS - 1 and d == 1))
    ]
    out.append(float(np.mean(vals)) if vals else None)
  return out


def _bin_names() -> list[str]:
  return [f"{b / DEPTH_BINS:.1f}–{(b + 1) / DEPTH_BINS:.1f}" for b in range(DEPTH_BINS)]


def depth_rows(comp: dict) -> tuple[list, list]:
  """SAE quality and association share, mean per relative-depth bin, one row per (model, quantity)."""
  rows = []
  for label, e in comp["models"].items():
    sae = e.get("sae")
    for col, name in SAE_METRICS:
      if sae:
        rows.append([label, name] + [render.fmt(v) for v in _binned(sae["depth"], sae[col])])
    for ds, assoc in _associations(e):
      rows.append(
        [label, f"tracker: accepted share ({ds})"]
        + [render.fmt(v) for v in _binned(assoc["depth"], assoc["accepted_share"])]
      )
  return ["model", "quantity"] + [f"depth {b}" for b in _bin_names()], rows


def _associations(entry: dict) -> list[tuple[str, dict]]:
  return [(ds, d["association"]) for ds, d in entry["datasets"].items() if d["association"]]


def _ordered_methods(per_model: dict) -> list[str]:
  """GhostTrack's primary detector, each model's strongest baseline and question-only control, then every
  other method in the order of the first metrics file that has it."""
  first = [metrics_lib.PRIMARY]
  for m in per_model.values():
    first += [x for x in (m.get("best_baseline"), m.get("best_question_only")) if x]
  rest = [name for m in per_model.values() for name in m["methods"]]
  return list(dict.fromkeys(x for x in first + rest if any(x in m["methods"] for m in per_model.values())))


def detection_rows(per_model: dict) -> tuple[list, list]:
  labels = list(per_model)
  header = ["method"] + [f"{label}: AUROC [95% CI]" for label in labels]
  rows = []
  for name in _ordered_methods(per_model):
    row = [name]
    for label in labels:
      m = per_model[label]
      r = m["methods"].get(name)
      mark = " (strongest baseline)" if name == m.get("best_baseline") else ""
      mark += " (question-only control)" if name == m.get("best_question_only") else ""
      ci = f" {render.fmt_ci(r['auroc_ci'])}" if r and r["auroc"] is not None else ""
      row.append(f"{render.fmt(r['auroc'])}{ci}{mark}" if r else "—")
    rows.append(row)
  # The within-relation control (wikidata): AUROC of each method within relations, pooled.
  within = [m.get("per_relation", {}).get("within", {}) for m in per_model.values()]
  for name in dict.fromkeys(n for w in within for n in w):
    rows.append(
      [f"within relation: {name}"]
      + [
        f"{render.fmt(w[name]['auroc'])} {render.fmt_ci(w[name]['auroc_ci'])}" if name in w else "—"
        for w in within
      ]
    )
  for key, what in (
    ("ghosttrack_minus_best_baseline", "Δ GhostTrack − strongest baseline"),
    ("ghosttrack_minus_question_only", "Δ GhostTrack − question-only control"),
  ):
    row = [what]
    for label in labels:
      g = per_model[label].get(key) or {}
      row.append(f"{render.fmt(g.get('delta'))} {render.fmt_ci(g.get('ci'))}" if g else "—")
    rows.append(row)
  return header, rows


# ---- plots -------------------------------------------------------------------------------------------


def plot_depth(comp: dict) -> str | None:
  """SAE quality (four panels) and the tracker's accepted share against relative depth, a line per model
  (per model and dataset for the shares, dashed after the first dataset)."""
  models = {k: e for k, e in comp["models"].items() if e.get("sae") or _associations(e)}
  if not models:
    return None
  panels = list(SAE_METRICS) + [("accepted_share", "tracker: accepted association share")]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
  for ax, (col, name) in zip(axes, panels):
    for i, (label, e) in enumerate(models.items()):
      lines = _associations(e) if col == "accepted_share" else [("", e["sae"])] if e.get("sae") else []
      for j, (ds, src) in enumerate(lines):
        ys = [np.nan if v is None else v for v in src[col]]
        name_ = f"{label}: {ds}" if len(lines) > 1 else label
        ax.plot(src["depth"], ys, "-o" if j == 0 else "--o", ms=3, color=f"C{i}", label=name_)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("relative depth (layer / (blocks − 1))", fontsize=8)
  axes[0].legend(fontsize=7)
  return plots_lib.png(fig)


def plot_detection(per_model: dict, dataset: str) -> str | None:
  """AUROC with its interval for the key methods (primary, strongest baselines, controls), per model."""
  keys = [
    k
    for k in dict.fromkeys(
      [metrics_lib.PRIMARY]
      + [x for m in per_model.values() for x in (m.get("best_baseline"), m.get("best_question_only")) if x]
    )
  ]
  if not keys:
    return None
  fig, ax = plt.subplots(figsize=(7, 0.5 * len(keys) * max(1, len(per_model)) ** 0.5 + 1.2))
  step = 0.8 / max(len(per_model), 1)
  for i, (label, m) in enumerate(per_model.items()):
    for j, name in enumerate(keys):
      r = m["methods"].get(name)
      if not r or r["auroc"] is None:
        continue
      y = len(keys) - 1 - j + 0.4 - (i + 0.5) * step
      lo, hi = r["auroc_ci"] if r["auroc_ci"] and r["auroc_ci"][0] is not None else (r["auroc"], r["auroc"])
      ax.plot([lo, hi], [y, y], color=f"C{i}", lw=2)
      ax.plot(r["auroc"], y, "o", color=f"C{i}", label=label if j == 0 else None)
  ax.axvline(0.5, color="k", ls=":", lw=0.8)
  ax.set_yticks(range(len(keys))[::-1])
  ax.set_yticklabels(keys, fontsize=8)
  ax.set_xlabel("AUROC with 95% question-bootstrap interval (hallucinated = positive)")
  ax.set_title(f"{dataset}: key methods per model", fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  return plots_lib.png(fig)


def plots(comp: dict) -> dict:
  return {
    "depth": plot_depth(comp),
    "detection": {ds: plot_detection(per_model, ds) for ds, per_model in comp["datasets"].items()},
  }


# ---- rendering --------------------------------------------------------------------------------------

_INTRO = (
  "Relative depth = layer / (blocks − 1); per-depth tables average the layers in each fifth of the depth. "
  "AUROCs are out-of-fold, positive class = hallucinated, 95% intervals from question resamples; a Δ is "
  "a paired difference within one model's answers. Each model answers in its own words, so the sets of "
  "answers (and their difficulty) differ between models."
)


def to_markdown(comp: dict, level: str = "##") -> str:
  out = [f"{level} Across models", "", _INTRO, "", render.md_table(*model_rows(comp)), ""]
  header, rows = depth_rows(comp)
  if rows:
    out += [
      f"{level}# SAE quality and tracker association per relative depth",
      "",
      render.md_table(header, rows),
      "",
    ]
  for ds, per_model in comp["datasets"].items():
    out += [f"{level}# Detection: {ds}", "", render.md_table(*detection_rows(per_model)), ""]
  return "\n".join(out) + "\n"


def to_html(comp: dict, figures: dict, level: int = 2) -> str:
  e = html.escape
  img = lambda b64, alt: f"<img alt='{e(alt)}' src='data:image/png;base64,{b64}'>" if b64 else ""  # noqa: E731
  out = [f"<h{level}>Across models</h{level}>", f"<p>{e(_INTRO)}</p>", render.html_table(*model_rows(comp))]
  header, rows = depth_rows(comp)
  if rows:
    out += [f"<h{level + 1}>SAE quality and tracker association per relative depth</h{level + 1}>"]
    out += [render.html_table(header, rows), img(figures.get("depth"), "per-depth comparison")]
  for ds, per_model in comp["datasets"].items():
    out += [f"<h{level + 1}>Detection: {e(ds)}</h{level + 1}>", render.html_table(*detection_rows(per_model))]
    out.append(img(figures.get("detection", {}).get(ds), f"{ds}: key methods"))
  return "\n".join(out)


def page(comp: dict, figures: dict) -> str:
  """A whole HTML page (the compare command's output)."""
  return (
    f"<!doctype html><html><head><meta charset='utf-8'><title>GhostTrack: across models</title>"
    f"<style>{render.CSS}</style></head><body>{to_html(comp, figures, level=1)}</body></html>"
  )
