"""What the report reads: every finished dataset's metrics, scores, detector, tracks and examples (each
through its owner module), the SAE quality table and the code commit (the comparison across models is
report.compare's)."""

import json
import os
import subprocess

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import detector, oof
from ghosttrack_jax.errors import IncompleteStoreError
from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.evaluate import transfer as transfer_lib
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import feature_table
from ghosttrack_jax.train import quality

SAE_COLUMNS = (
  "layer",
  "l0",
  "fvu",
  "fvu_robust",  # FVU without the outlier rows (massive-activation tokens), the figure judged
  "outlier_rows",
  "mse",
  "cosine",
  "dead_fraction",
  "never_fired_eval",
  "dense_fraction",
  "dense_latents",
  "ce_loss_recovered",
  "delta_lm_loss",
  "kl",
  "input_scale",
)


def code_commit() -> dict:
  root = paths.REPO_ROOT
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
    return {"commit": commit or None, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def _scalar(v) -> bool:
  return isinstance(v, (int, float, bool)) or v is None


def read_sae_quality(config, workdir: str) -> dict:
  """The per-layer SAE quality table of the train stage (train.quality owns it), as report rows.

  Returns {"rows": [...], "columns": [...], "source": file, "notes", "targets"} or {"note": why not}.
  """
  if config.sae.source:
    return {
      "note": f"SAEs trained elsewhere (config.sae.source={config.sae.source}): the train stage, which "
      "measures SAE quality, did not run"
    }
  directory = paths.for_config(config, workdir).sae_results
  try:
    table = quality.load_table(directory)
  except IncompleteStoreError as e:
    return {"note": str(e)}
  flat = [{k: v for k, v in r.items() if _scalar(v)} for r in table["layers"]]
  cols = [c for c in SAE_COLUMNS if any(c in r for r in flat)]
  return {
    "rows": flat,
    "columns": cols[:14],
    "source": quality.METRICS_JSON,
    "notes": [str(n) for n in table.get("notes", [])],
    "targets": table.get("targets"),
  }


AUDIT_DIR = os.path.join(paths.REPO_ROOT, "docs", "audits")


def label_audit(model: str, dataset: str, examples: dict) -> dict | None:
  """The hand label audit `docs/audits/<model>_<dataset>.jsonl` (one line per audited answer: id,
  answer, gold, label, verdict "agree" | "disagree", reason), matched to this run's examples by id and
  answer text; None when there is no audit file. Only matched rows count, so an audit of another run
  (other answers) is reported as such, never as this run's agreement."""
  path = os.path.join(AUDIT_DIR, f"{model}_{dataset}.jsonl")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  matched = [r for r in rows if r["id"] in examples and examples[r["id"]]["answer_text"] == r["answer"]]
  agree = sum(r["verdict"] == "agree" for r in matched)
  return {
    "file": os.path.relpath(path, paths.REPO_ROOT),
    "n_audited": len(rows),
    "n_matched": len(matched),
    "n_agree": agree,
    "agreement": agree / len(matched) if matched else None,
    "disagreements": [
      {k: r[k] for k in ("id", "answer", "gold", "label", "reason")}
      for r in matched
      if r["verdict"] != "agree"
    ],
  }


def load_dataset_results(config, workdir: str, dataset: str) -> dict:
  """Everything the report shows about one evaluated dataset, each part read through its owner."""
  d = {
    "dataset": dataset,
    "metrics": evaluate_stage.load_metrics(evaluate_stage.directory(config, workdir, dataset)),
  }
  det_dir = oof.directory(config, workdir, dataset)
  d["scores"] = oof.load_scores(det_dir)
  manifest = detector.load_manifest(detector.directory(det_dir))
  if manifest is not None:
    d["detector"] = manifest
  d["track_report"] = feature_table.load_report(feature_table.directory(config, workdir, dataset))
  tracks = feature_table.load_tracks(feature_table.directory(config, workdir, dataset))
  if tracks is not None:
    d["tracks"] = tracks
  d["examples"] = {e["id"]: e for e in examples_lib.load_examples(config, workdir, dataset)}
  return d


# Method families of docs/method.md §6.6 and why a run may lack them (the report names what did not run).
EXPECTED = (
  (
    "unsupervised/semantic_entropy",
    "sampling scores (semantic entropy, EigenScore, ...): no samples (config.qa.n_samples = 0, or a given-text set)",
  ),
  ("unsupervised/p_false", "P(True): not asked (config.qa.p_true = False, or a given-text set)"),
  (
    "question_only/relation_and_familiarity",
    "subject familiarity: the questions name no subject (only wikidata's do)",
  ),
  ("probe/tbg_best_layer", "position probes: the feature table has no position sets (rerun 'track')"),
)


def not_run(metrics: dict) -> list[str]:
  """A line per method family that this run could not score, saying why."""
  out = [f"Not run here: {why}." for name, why in EXPECTED if name not in metrics["methods"]]
  if "relation_held_out" not in metrics and metrics.get("mode") != "given_text":
    out.append("Not run here: relation-held-out CV: the questions have no relations (only wikidata's do).")
  return out


def transfer(config, workdir: str) -> dict | None:
  """The transfer matrices (tools/transfer.py), when that command was run in this workdir."""
  return transfer_lib.load(config, workdir)


def evaluated_datasets(p: paths.ModelPaths) -> list[str]:
  if not os.path.isdir(p.evaluation):
    return []
  return sorted(n for n in os.listdir(p.evaluation) if atomic_io.is_done(os.path.join(p.evaluation, n)))


def case_studies(ds: dict, n_per_class: int) -> list[dict]:
  """Up to n examples per class that have tracks: confident and wrong detector picks included."""
  tr, ex = ds.get("tracks"), ds.get("examples") or {}
  if tr is None:
    return []
  sc = ds.get("scores")
  oof = {}
  if sc is not None:
    names = [str(n) for n in sc["methods"]]
    if metrics_lib.PRIMARY in names:
      oof = dict(zip(sc["example_id"].astype(str), sc["scores"][names.index(metrics_lib.PRIMARY)][0]))
  picked = {0: [], 1: []}
  for i, eid in enumerate(tr["example_id"].astype(str)):
    e = ex.get(eid)
    if e is None or len(picked[e["label"]]) >= n_per_class:
      continue
    picked[e["label"]].append(
      {
        "index": i,
        "id": eid,
        "question": e["question"],
        "answer": e["answer_text"],
        "gold": e.get("gold", []),
        "label": e["label"],
        "score": oof.get(eid),
      }
    )
  return picked[0] + picked[1]
