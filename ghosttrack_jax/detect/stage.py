"""Stage `detect`: cross-validated hallucination detectors on the saved folds (docs/method.md §5.2, §6.3).

Reads the feature table written by `track` (`results/<model>/tracking/<dataset>/features.{npz,json}`,
schema in docs/DESIGN.md "Feature tables") and the examples/fold file of `answer`. Every method is scored
out of fold on the same folds; everything a method fits (constant-column drop, scaler, C, probe layer,
bag-of-words vocabulary, decision threshold) is fit on the training folds only:

  * classifiers (scikit-learn pipelines: drop constant columns -> StandardScaler -> model):
    `logistic` (L2, class_weight='balanced', C from `config.evaluate.logistic_cs` by grouped inner CV;
    the primary detector; with more columns than training rows it is fit in the training rows' span,
    which is exact for an L2 penalty, see `classifiers.RowSpace`), `random_forest` (100 trees,
    balanced, random_state=42), `gradient_boosting`
    (100 stages, lr 0.1, depth 3, balanced sample weights), `svm` (RBF, C=1, balanced, probability=True)
    and `ensemble` (mean probability of RF, GB and LR(C=1)).
  * GhostTrack (26 metrics) with every classifier in `config.evaluate.classifiers`; the reconstruction
    family, every ablation and sweep set, and the combined row with logistic regression.
  * baselines: one-feature logistic regressions on each scalar (answer length in tokens and words, mean
    and max token NLL, mean predictive entropy; the sign is learned on training folds) and on all of
    them; raw-residual and pooled-SAE probes, best layer (layer chosen by grouped inner CV at C=1, then
    C by inner CV) and all layers; a bag-of-words logistic regression on the answer text; in given-text
    mode also the opener indicator ("No", "Nothing", "Not", "It depends", "There is no", ...).
  * thresholds: Youden's J on grouped inner cross-validated scores of the training folds
    (`evaluate.choose_threshold`), stored per (method, repeat, fold).

The final detectors (GhostTrack features, every configured classifier) are fit on all rows and saved
under `detector/`: `manifest.json` (feature names, schema, L, k, pooling, SAE/examples manifest hashes,
config, thresholds, importances), `logistic.json` (the primary detector's parameters; no pickle) and
`<classifier>.joblib` for the others (scikit-learn objects; load only files you made).

`Detector` and `detect.score` are the Python API; `tools/score_cli.py` the command line.
"""

import hashlib
import json
import logging

import numpy as np
import threadpoolctl

from ghosttrack_jax import config_lib, stats
from ghosttrack_jax.detect import cv, detector, oof
from ghosttrack_jax.detect.methods import FeatureData, load_feature_data, plan_methods
from ghosttrack_jax.runtime import atomic_io, progress
from ghosttrack_jax.track import feature_table

# The settings a method's out-of-fold fits depend on besides the rows (the outer folds come with the
# answer stage's examples): a part saved by a killed run is reused only when these, the feature table
# and the rows' labels and folds are the same (not after logistic_cs changed, or the table was rebuilt).
CV_FIELDS = ("seed", "inner_folds", "logistic_cs")


def run(config, workdir: str) -> None:
  """Stage entry point. BLAS is held to one thread: the many small eigh/Newton problems of the CV run
  up to 100x slower with two contending OpenBLAS threads on a shared 2-core machine (measured)."""
  with threadpoolctl.threadpool_limits(limits=1):
    _run(config, workdir)


def part_key(config, workdir: str, dataset: str, data: FeatureData) -> str:
  """SHA-256 of the CV settings, the feature table's files (their checksums in its DONE) and the rows'
  ids, labels and outer folds."""
  table = feature_table.directory(config, workdir, dataset)
  files = atomic_io.read_done(table, "rerun the 'track' stage").get(atomic_io.DONE_FILES)
  cv_settings = {name: config.evaluate[name] for name in CV_FIELDS}
  h = hashlib.sha256(
    json.dumps({"cv": cv_settings, "features": files}, sort_keys=True, default=list).encode()
  )
  for rows in (data.example_id.astype(str), data.label, data.folds):
    h.update(np.ascontiguousarray(rows).tobytes())
  return h.hexdigest()


def _run(config, workdir: str) -> None:
  dataset = config_lib.question_set(config)
  out_dir = oof.directory(config, workdir, dataset)
  if atomic_io.is_done(out_dir):
    oof.verify(out_dir)
    logging.info("detect: %s is complete; skipping", out_dir)
    return
  data = load_feature_data(config, workdir, dataset)
  methods = plan_methods(data, config)
  key = part_key(config, workdir, dataset, data)
  results = {}
  for spec in progress.track(methods, "detect", "method"):
    res = oof.load_method(out_dir, spec.name, key)  # resume: methods finished under the same key
    if res is None:
      res = cv.cross_validate(spec, data, config.evaluate)
      oof.save_method(out_dir, spec.name, res, key)
      logging.info(
        "detect: %-45s pooled OOF AUROC %.3f",
        spec.name,
        float(stats.nanmean([stats.auroc(s, data.label) for s in res["scores"]])),
      )
    results[spec.name] = res
  oof.save_scores(out_dir, methods, results, data, dataset)
  _relation_held_out(config, data, methods, out_dir, f"{key}:relation_folds={config.evaluate.relation_folds}")
  _label_variants(config, data, methods, out_dir)
  if "ghosttrack" in data.sets:
    detector.save_final_detectors(config, data, detector.directory(out_dir), workdir)
  oof.mark_done(out_dir, len(methods))
  logging.info("detect: %d methods scored on %d examples -> %s", len(methods), len(data.label), out_dir)


def _relation_held_out(config, data: FeatureData, methods, out_dir: str, key: str) -> None:
  """The methods marked `loro`, cross-validated with whole relations held out (train on the other
  relations, score the held-out ones; `config.evaluate.relation_folds` folds of relations, 0 = one per
  relation), where every row has a relation and there are at least two."""
  if len(set(data.relation.tolist()) - {""}) < 2 or "" in set(data.relation.tolist()):
    return
  folds = cv.relation_folds(data, config.evaluate.relation_folds, config.evaluate.seed)
  results = {}
  for spec in progress.track([m for m in methods if m.loro], "detect: relation held out", "method"):
    name = "loro__" + spec.name
    res = oof.load_method(out_dir, name, key)
    if res is None:
      res = cv.cross_validate(spec, data, config.evaluate, folds=folds)
      oof.save_method(out_dir, name, res, key)
      logging.info(
        "detect: relation held out %-30s AUROC %.3f",
        spec.name,
        stats.auroc(res["scores"][0], data.label),
      )
    results[spec.name] = res
  oof.save_loro(out_dir, results, folds, data.relation)


LABEL_VARIANT_METHODS = ("ghosttrack/logistic", "baseline/scalar_all", "combined/ghosttrack+scalar_baselines")


def _label_variants(config, data: FeatureData, methods, out_dir: str) -> None:
  """GhostTrack and the scalar baselines re-scored under every other label method (docs/method.md §6.2
  item 4: results under at least `containment` and `exact`), on the same folds."""
  specs = [m for m in methods if m.name in LABEL_VARIANT_METHODS]
  k = int(data.folds.max()) + 1
  arrays, info = {}, {"primary": data.label_method, "variants": {}}
  for method, y in sorted(data.label_variants.items()):
    n1 = int(y.sum())
    entry = {"n_hallucinated": n1, "n_correct": int(len(y) - n1), "methods": []}
    info["variants"][method] = entry
    if min(n1, len(y) - n1) < k:
      entry["skipped"] = f"a class has fewer than {k} examples"
      continue
    for spec in specs:
      res = cv.cross_validate(spec, data, config.evaluate, labels=y)
      key = oof.safe_name(f"{method}__{spec.name}")
      arrays["scores__" + key], arrays["thresholds__" + key] = res["scores"], res["thresholds"]
      entry["methods"].append({"method": spec.name, "key": key})
    arrays["label__" + oof.safe_name(method)] = y.astype(np.int8)
  oof.save_label_variants(out_dir, arrays, info)
