"""Stage `evaluate`: out-of-fold scores -> metrics with question-level bootstrap CIs (docs/method.md §6.2-6.3).

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
  * the question-only controls (relation one-hot, + question words) and GhostTrack minus the best of
    them; per wikidata relation (with at least `config.evaluate.per_relation_min_class` of each class)
    the AUROC of GhostTrack, the strongest baseline and the best question-only control, and each one's
    within-relation AUROC (pairs from the same relation only; `metrics.per_relation`);
  * a degeneracy report of every GhostTrack-style feature set (constant / near-constant metrics,
    effective rank), recomputed from the feature table.

With R > 1 repeats, a metric is the mean over repeats of the pooled metric, also inside each resample.

Writes `results/<model>/evaluation/<dataset>/metrics.json` and `DONE` (with its SHA-256, checked by
`load_metrics`).
"""

import logging
import os

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import oof
from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import divergence, feature_table

METRICS = "metrics.json"
SCHEMA_VERSION = 1  # of metrics.json; absent = 1 (written before the field existed)


def directory(config, workdir: str, dataset: str | None = None) -> str:
  return os.path.join(
    paths.for_config(config, workdir).evaluation, dataset or config_lib.question_set(config)
  )


def verify(out_dir: str) -> None:
  """Checks metrics.json against the checksum in its folder's DONE (DamagedOutputError otherwise)."""
  if not atomic_io.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'evaluate' stage first")
  fix = f"delete {out_dir} and rerun the 'evaluate' stage (--stages=evaluate,report)"
  atomic_io.verify_done(out_dir, (METRICS,), fix)


def load_metrics(out_dir: str) -> dict:
  """metrics.json of a finished evaluate stage (this module is its one owner), checksum-checked."""
  verify(out_dir)
  m = atomic_io.read_json(os.path.join(out_dir, METRICS))
  if m.get("schema_version", 1) != SCHEMA_VERSION:
    raise StoreMismatchError(
      f"{out_dir}/{METRICS} schema_version={m.get('schema_version')}, expected {SCHEMA_VERSION}: "
      "rerun the 'evaluate' stage"
    )
  return m


def degeneracy(arrays: dict, meta: dict) -> dict:
  """Degeneracy report (divergence.degeneracy_report) of each 26-metric feature set in the table."""
  out = {}
  for name, info in meta.get("feature_sets", {}).items():
    if info.get("per_layer") or info.get("kind") not in ("ghosttrack", "ablation", "sweep", "reconstruction"):
      continue
    x = arrays["X__" + name].astype(np.float64)
    rep = divergence.degeneracy_report(x, names=info["columns"])
    out[name] = {k: rep[k] for k in ("constant", "near_constant", "effective_rank_99", "n_examples")}
    out[name]["columns"] = rep["columns"]
  return out


def run(config, workdir: str) -> None:
  dataset = config_lib.question_set(config)
  det_dir = oof.directory(config, workdir, dataset)
  out_dir = directory(config, workdir, dataset)
  if atomic_io.is_done(out_dir):
    verify(out_dir)
    logging.info("evaluate: %s is complete; skipping", out_dir)
    return
  d = oof.load_scores(det_dir)
  methods_meta = oof.load_methods(det_dir)
  metrics = metrics_lib.evaluate_all(d, methods_meta, config.evaluate.n_bootstrap, config.evaluate.seed)
  tr_dir = feature_table.directory(config, workdir, dataset)
  if atomic_io.is_done(tr_dir):
    metrics["degeneracy"] = degeneracy(*feature_table.load_features(tr_dir))
  am = examples_lib.load_manifest(config, workdir, dataset)
  metrics["answers"] = {
    k: am.get(k)
    for k in (
      "mode",
      "label_method",
      "label_rates",
      "n_examples",
      "n_excluded",
      "excluded_reasons",
      "n_questions",
      "warnings",
      "prompt",
      "data_files",
      "flags",
      "flags_by_class",
      "relations",
    )
  }
  relation_of = {e["id"]: e.get("relation", "") for e in examples_lib.load_examples(config, workdir, dataset)}
  relation = [relation_of[str(e)] for e in d["example_id"]]
  if any(relation):
    chosen = [
      n
      for n in (metrics_lib.PRIMARY, metrics.get("best_baseline"), metrics.get("best_question_only"))
      if n is not None and n in metrics["methods"]
    ]
    metrics["per_relation"] = metrics_lib.per_relation(
      d,
      relation,
      list(dict.fromkeys(chosen)),
      config.evaluate.n_bootstrap,
      config.evaluate.seed,
      config.evaluate.per_relation_min_class,
    )
  loro = oof.load_loro(det_dir)
  if loro is not None:
    metrics["relation_held_out"] = metrics_lib.relation_held_out(
      loro, d, config.evaluate.n_bootstrap, config.evaluate.seed
    )
  variants = oof.load_label_variants(det_dir)
  if variants is not None:
    metrics["label_variants"] = metrics_lib.evaluate_label_variants(
      *variants, d, config.evaluate.n_bootstrap, config.evaluate.seed
    )
  metrics["schema_version"] = SCHEMA_VERSION
  metrics["dataset"] = dataset
  metrics["model"] = config.model.name
  metrics["mode"] = methods_meta.get("mode", "own_answer")
  atomic_io.atomic_write_json(os.path.join(out_dir, METRICS), metrics)
  atomic_io.write_done(out_dir, {"n_methods": len(metrics["methods"])}, files=(METRICS,))
  prim = metrics["methods"].get(metrics_lib.PRIMARY, {})
  logging.info(
    "evaluate: %s AUROC %s CI %s -> %s", metrics_lib.PRIMARY, prim.get("auroc"), prim.get("auroc_ci"), out_dir
  )
