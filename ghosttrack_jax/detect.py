"""Stage `detect`: cross-validated hallucination detectors on the saved folds (method.md §5.2, §6.3).

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

`Detector` is the Python API; `detect_cli.py` the command line.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re

import numpy as np

from ghosttrack_jax import answers, classifiers, evaluate, io_utils, paths
from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError

SCHEMA_VERSION = 1
CLASSIFIERS = classifiers.CLASSIFIERS
SCALAR_BASELINES = ("answer_tokens", "answer_words", "mean_nll", "max_nll", "mean_entropy")
OPENER = re.compile(r"^\s*(no|nothing|not|none|never|nobody|it depends|there is no|there are no|"
                    r"i have no comment)\b", re.IGNORECASE)


@dataclasses.dataclass
class FitResult:
  model: object
  threshold: float
  choice: dict
  degenerate: bool


def fit_with_selection(spec: "Method", data: "FeatureData", train, y_all, groups_all, cfg, seed) -> FitResult:
  """Fits one method on rows `train`: inner-CV choice of C / layer, threshold from inner OOF scores."""
  y, groups = y_all[train], groups_all[train]
  splits = classifiers.inner_splits(y, groups, cfg.inner_folds, seed)
  cs = tuple(cfg.logistic_cs)
  choice = {}
  if spec.layer_select:
    x3 = data.get3(spec.feature_set, train)
    if splits is not None:
      scores = [classifiers.auc_or_worst(classifiers.lr_inner_oofs(x3[:, l], y, splits, (1.0,))[1.0], y)
                for l in range(x3.shape[1])]
      layer = int(np.argmax(scores))
    else:
      layer = x3.shape[1] - 1
    choice["layer_index"] = layer
    choice["layer"] = int(data.layers[layer])
    x = x3[:, layer]
  else:
    x = data.get(spec, train)
  if spec.classifier == "logistic" and splits is not None and spec.search_c:
    oofs = (_inner_oof_by_c(spec, x, y, splits, cs) if spec.text_features else
            classifiers.lr_inner_oofs(x, y, splits, cs))
    aucs = {c: classifiers.auc_or_worst(o, y) for c, o in oofs.items()}
    best_c = max(cs, key=lambda c: (aucs[c], -c))  # ties -> stronger regularisation
    choice["C"] = best_c
    oof = oofs[best_c]
  else:
    best_c = 1.0
    oof = classifiers.inner_oof(lambda: spec.make(best_c), x, y, splits) if splits is not None else None
    if spec.classifier == "logistic":
      choice["C"] = best_c
  threshold = evaluate.choose_threshold(oof, y) if oof is not None else 0.5
  model, degenerate = classifiers.fit_or_prior(lambda: spec.make(best_c), x, y)
  return FitResult(model, threshold, choice, degenerate)


def _inner_oof_by_c(spec, x, y, splits, cs) -> dict:
  return {c: classifiers.inner_oof(lambda c=c: spec.make(c), x, y, splits) for c in cs}


def predict(spec: "Method", data: "FeatureData", fit: FitResult, rows) -> np.ndarray:
  if spec.layer_select:
    x = data.get3(spec.feature_set, rows)[:, fit.choice["layer_index"]]
  else:
    x = data.get(spec, rows)
  return classifiers.proba(fit.model, x)


# ---- feature data and methods ------------------------------------------------------------------

class FeatureData:
  """The aligned feature table: arrays per set, labels, groups, folds, answer texts."""

  def __init__(self, sets: dict, meta: dict, example_id, label, group_id, folds, texts):
    self.sets = sets
    self.meta = meta
    self.example_id = np.asarray(example_id)
    self.label = np.asarray(label).astype(int)
    self.group_id = np.asarray(group_id)
    self.folds = np.asarray(folds).astype(int)
    self.texts = list(texts)
    self.layers = meta.get("layers") or list(range(meta.get("n_layers", 0)))

  def columns(self, name):
    return self.meta["feature_sets"][name]["columns"]

  def get(self, spec: "Method", rows) -> np.ndarray:
    if spec.text_features:
      return np.asarray([self.texts[i] for i in rows], dtype=object)
    parts = []
    for name, cols in spec.parts:
      x = self.sets[name][rows]
      if x.ndim == 3:
        x = x.reshape(len(rows), -1)
      if cols is not None:
        idx = [self.columns(name).index(c) for c in cols]
        x = x[:, idx]
      parts.append(np.asarray(x, np.float64))
    return np.concatenate(parts, axis=1)

  def get3(self, name, rows) -> np.ndarray:
    return np.asarray(self.sets[name][rows], np.float64)


@dataclasses.dataclass
class Method:
  name: str
  kind: str
  label: str
  classifier: str = "logistic"
  parts: tuple = ()  # ((feature_set, columns or None), ...)
  feature_set: str = ""  # for layer_select
  layer_select: bool = False
  text_features: str = ""  # "bow" | "opener"
  search_c: bool = True

  def make(self, c=1.0):
    if self.text_features == "bow":
      import sklearn.feature_extraction.text  # pylint: disable=g-import-not-at-top
      import sklearn.linear_model  # pylint: disable=g-import-not-at-top
      import sklearn.pipeline  # pylint: disable=g-import-not-at-top
      return sklearn.pipeline.Pipeline([
          ("bow", sklearn.feature_extraction.text.CountVectorizer(lowercase=True, binary=True)),
          # lbfgs on the sparse counts: Newton-Cholesky would form a vocabulary x vocabulary Hessian
          ("clf", sklearn.linear_model.LogisticRegression(C=c, class_weight="balanced", max_iter=5000))])
    return classifiers.make_classifier(self.classifier, c)

  def describe(self) -> dict:
    return {"kind": self.kind, "label": self.label, "classifier": self.classifier,
            "features": [[n, c] for n, c in self.parts] if self.parts else self.feature_set or self.text_features,
            "layer_select": self.layer_select}


def plan_methods(data: FeatureData, config) -> list[Method]:
  """Every method to score, in report order."""
  fs = data.meta["feature_sets"]
  classifiers = [c for c in config.evaluate.classifiers]
  out = []
  if "ghosttrack" in fs:
    for clf in classifiers:
      kind = "ghosttrack" if clf == "logistic" else "ghosttrack_classifier"
      out.append(Method(f"ghosttrack/{clf}", kind, f"GhostTrack 26 metrics, {clf}", clf,
                        (("ghosttrack", None),)))
  if "reconstruction" in fs:
    out.append(Method("reconstruction/logistic", "reconstruction", "Reconstruction-error family (8), LR",
                      "logistic", (("reconstruction", None),)))
  if config.evaluate.get("ablations", True):
    for name, info in fs.items():
      if name.startswith("ghosttrack_") and not info.get("per_layer"):
        kind = info.get("kind") or ("sweep" if ("topk" in name or "pool" in name) else "ablation")
        out.append(Method(f"{name}/logistic", kind, f"{name} (26 metrics), LR", "logistic", ((name, None),)))
  if "scalar_baselines" in fs:
    for col in fs["scalar_baselines"]["columns"]:
      out.append(Method(f"baseline/{col}", "baseline", f"{col} (1-feature LR)", "logistic",
                        (("scalar_baselines", [col]),), search_c=False))
    out.append(Method("baseline/scalar_all", "baseline", "all scalar baselines, LR", "logistic",
                      (("scalar_baselines", None),)))
  for name, label in (("raw_resid", "raw-residual probe"), ("sae_pooled", "pooled SAE-feature probe")):
    if name in fs:
      out.append(Method(f"probe/{name}_best_layer", "probe", f"{label}, best layer (inner CV)", "logistic",
                        feature_set=name, layer_select=True))
      out.append(Method(f"probe/{name}_all_layers", "probe", f"{label}, all layers", "logistic",
                        ((name, None),)))
  out.append(Method("surface/bag_of_words", "surface", "bag of words on the answer text, LR",
                    text_features="bow"))
  if data.meta.get("mode") == "given_text":
    out.append(Method("surface/opener", "surface", "opener indicator (No/Not/Nothing/It depends...)",
                      parts=(("opener", None),), search_c=False))
  if "ghosttrack" in fs and "scalar_baselines" in fs:
    out.append(Method("combined/ghosttrack+scalar_baselines", "combined", "GhostTrack + scalar baselines, LR",
                      "logistic", (("ghosttrack", None), ("scalar_baselines", None))))
  if "ghosttrack" in fs and "raw_resid" in fs:
    out.append(Method("combined/ghosttrack+raw_resid_all_layers", "combined",
                      "GhostTrack + raw residuals (all layers), LR", "logistic",
                      (("ghosttrack", None), ("raw_resid", None))))
  return out


def load_feature_data(config, workdir: str, dataset: str | None = None) -> FeatureData:
  """Loads the feature table, checks it against the answer stage's fold file, adds text features."""
  dataset = dataset or config.qa.dataset
  p = paths.for_config(config, workdir)
  tr_dir = os.path.join(p.tracking, dataset)
  if not io_utils.is_done(tr_dir):
    raise IncompleteStoreError(f"{tr_dir} has no DONE marker: run the 'track' stage first")
  meta = io_utils.read_json(os.path.join(tr_dir, "features.json"))
  if meta.get("schema_version") != SCHEMA_VERSION:
    raise StoreMismatchError(f"{tr_dir}/features.json schema_version={meta.get('schema_version')}, "
                             f"expected {SCHEMA_VERSION}")
  with np.load(os.path.join(tr_dir, "features.npz"), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  folds_file = answers.load_folds(config, workdir, dataset)
  examples = {e["id"]: e for e in answers.load_examples(config, workdir, dataset)}
  eid = arrays["example_id"].astype(str)
  pos = {e: i for i, e in enumerate(folds_file["example_id"].astype(str))}
  missing = [e for e in eid if e not in pos]
  if missing:
    raise StoreMismatchError(f"{len(missing)} feature rows (e.g. {missing[0]}) are not in the answer "
                             "stage's examples: rerun 'track' after 'answer'")
  idx = np.array([pos[e] for e in eid])
  folds = folds_file["folds"][:, idx]
  label = folds_file["label"][idx].astype(int)
  if "label" in arrays and not np.array_equal(arrays["label"].astype(int), label):
    raise StoreMismatchError("labels in features.npz differ from the answer stage's fold file")
  if "folds" in arrays and not np.array_equal(arrays["folds"].astype(int), folds.astype(int)):
    raise StoreMismatchError("folds in features.npz differ from the answer stage's fold file")
  sets = {k[3:]: v for k, v in arrays.items() if k.startswith("X__")}
  for name in meta["feature_sets"]:
    if name not in sets:
      raise StoreMismatchError(f"features.json lists {name!r} but features.npz has no X__{name}")
  texts = [examples[e]["answer_text"] for e in eid]
  meta = json.loads(json.dumps(meta))
  meta.setdefault("mode", examples[eid[0]].get("mode", "own_answer"))
  if "scalar_baselines" not in sets:  # lengths are always available from the examples table
    sets["scalar_baselines"] = np.array([[len(examples[e]["answer_ids"]), len(examples[e]["answer_text"].split())]
                                         for e in eid], np.float32)
    meta["feature_sets"]["scalar_baselines"] = {"columns": ["answer_tokens", "answer_words"],
                                                "per_layer": False, "kind": "baseline"}
  if meta["mode"] == "given_text":
    sets["opener"] = np.array([[float(bool(OPENER.match(t)))] for t in texts], np.float32)
    meta["feature_sets"]["opener"] = {"columns": ["opener"], "per_layer": False, "kind": "surface"}
  fd = FeatureData(sets, meta, eid, label, folds_file["group_id"][idx], folds, texts)
  primary = examples[eid[0]].get("label_method")
  fd.label_variants = {m: np.array([int(examples[e]["labels_all"][m]) for e in eid])
                       for m in examples[eid[0]].get("labels_all", {}) if m != primary}
  fd.label_method = primary
  return fd


# ---- cross-validation ------------------------------------------------------------------------

def cross_validate(spec: Method, data: FeatureData, cfg, labels=None) -> dict:
  """Out-of-fold scores [R, N], thresholds [R, K] and per-fold choices of one method.

  `labels` replaces the primary labels (label-method sensitivity; same folds)."""
  labels = data.label if labels is None else np.asarray(labels).astype(int)
  n_rep, n = data.folds.shape
  k = int(data.folds.max()) + 1
  scores = np.zeros((n_rep, n))
  thresholds = np.full((n_rep, k), 0.5)
  choices, degenerate = [], 0
  for r in range(n_rep):
    for f in range(k):
      train = np.flatnonzero(data.folds[r] != f)
      test = np.flatnonzero(data.folds[r] == f)
      fit = fit_with_selection(spec, data, train, labels, data.group_id, cfg, seed=cfg.seed + 1000 * r + f)
      scores[r, test] = predict(spec, data, fit, test)
      thresholds[r, f] = fit.threshold
      choices.append({"repeat": r, "fold": f, **fit.choice})
      degenerate += int(fit.degenerate)
  return {"scores": scores, "thresholds": thresholds, "choices": choices, "degenerate_folds": degenerate}


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def run(config, workdir: str) -> None:
  """Stage entry point. BLAS is held to one thread: the many small eigh/Newton problems of the CV run
  up to 100x slower with two contending OpenBLAS threads on a shared 2-core machine (measured)."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  with threadpoolctl.threadpool_limits(limits=1):
    _run(config, workdir)


def _run(config, workdir: str) -> None:
  dataset = config.qa.dataset
  p = paths.for_config(config, workdir)
  out_dir = os.path.join(p.detection, dataset)
  if io_utils.is_done(out_dir):
    logging.info("detect: %s is complete; skipping", out_dir)
    return
  data = load_feature_data(config, workdir, dataset)
  methods = plan_methods(data, config)
  part_dir = os.path.join(out_dir, "methods")
  os.makedirs(part_dir, exist_ok=True)
  results = {}
  for spec in methods:
    path = os.path.join(part_dir, _safe(spec.name) + ".npz")
    info_path = path[:-4] + ".json"
    if os.path.exists(path) and os.path.exists(info_path):  # resume: finished methods are reused
      with np.load(path, allow_pickle=False) as z:
        results[spec.name] = {"scores": z["scores"], "thresholds": z["thresholds"],
                              **io_utils.read_json(info_path)}
      continue
    res = cross_validate(spec, data, config.evaluate)
    io_utils.atomic_save_npz(path, scores=res["scores"], thresholds=res["thresholds"])
    io_utils.atomic_write_json(info_path, {"choices": res["choices"], "degenerate_folds": res["degenerate_folds"]})
    results[spec.name] = res
    logging.info("detect: %-45s pooled OOF AUROC %.3f", spec.name,
                 float(evaluate.nanmean([evaluate.auroc(s, data.label) for s in res["scores"]])))
  names = [m.name for m in methods]
  io_utils.atomic_save_npz(
      os.path.join(out_dir, "scores.npz"), methods=np.array(names), example_id=data.example_id,
      group_id=data.group_id, label=data.label.astype(np.int8), folds=data.folds.astype(np.int16),
      scores=np.stack([results[n]["scores"] for n in names]).astype(np.float64),
      thresholds=np.stack([results[n]["thresholds"] for n in names]))
  _write_predictions_csv(os.path.join(out_dir, "predictions.csv"), names, results, data)
  io_utils.atomic_write_json(os.path.join(out_dir, "methods.json"), {
      "mode": data.meta.get("mode"), "dataset": dataset,
      "methods": {m.name: {**m.describe(), "choices": results[m.name]["choices"],
                           "degenerate_folds": results[m.name]["degenerate_folds"]} for m in methods}})
  _label_variants(config, data, methods, out_dir)
  if "ghosttrack" in data.sets:
    save_final_detectors(config, data, os.path.join(out_dir, "detector"), workdir)
  io_utils.write_done(out_dir, {"n_methods": len(names)})
  logging.info("detect: %d methods scored on %d examples -> %s", len(names), len(data.label), out_dir)


LABEL_VARIANT_METHODS = ("ghosttrack/logistic", "baseline/scalar_all", "combined/ghosttrack+scalar_baselines")


def _label_variants(config, data: FeatureData, methods, out_dir: str) -> None:
  """GhostTrack and the scalar baselines re-scored under every other label method (method.md §6.2 item 4:
  results under at least `containment` and `exact`), on the same folds. Writes label_variants.npz/json."""
  specs = [m for m in methods if m.name in LABEL_VARIANT_METHODS]
  k = int(data.folds.max()) + 1
  arrays, info = {}, {"primary": getattr(data, "label_method", None), "variants": {}}
  for lm, y in sorted(getattr(data, "label_variants", {}).items()):
    n1 = int(y.sum())
    entry = {"n_hallucinated": n1, "n_correct": int(len(y) - n1), "methods": []}
    info["variants"][lm] = entry
    if min(n1, len(y) - n1) < k:
      entry["skipped"] = f"a class has fewer than {k} examples"
      continue
    for spec in specs:
      res = cross_validate(spec, data, config.evaluate, labels=y)
      key = _safe(f"{lm}__{spec.name}")
      arrays["scores__" + key], arrays["thresholds__" + key] = res["scores"], res["thresholds"]
      entry["methods"].append({"method": spec.name, "key": key})
    arrays["label__" + _safe(lm)] = y.astype(np.int8)
  io_utils.atomic_save_npz(os.path.join(out_dir, "label_variants.npz"), **arrays)
  io_utils.atomic_write_json(os.path.join(out_dir, "label_variants.json"), info)


def _write_predictions_csv(path, names, results, data) -> None:
  lines = ["method,example_id,group_id,repeat,fold,split,score,label"]
  for name in names:
    s = results[name]["scores"]
    for r in range(s.shape[0]):
      for i in range(s.shape[1]):
        lines.append(f"{name},{data.example_id[i]},{data.group_id[i]},{r},{data.folds[r, i]},test,"
                     f"{s[r, i]:.6g},{data.label[i]}")
  io_utils.atomic_write_text(path, "\n".join(lines) + "\n")


# ---- final detectors -------------------------------------------------------------------------

def _hash_file(path: str) -> str | None:
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def save_final_detectors(config, data: FeatureData, out_dir: str, workdir: str) -> dict:
  """Fits every configured classifier on all rows of the GhostTrack set and saves it with a manifest."""
  import joblib  # pylint: disable=g-import-not-at-top
  import sklearn  # pylint: disable=g-import-not-at-top
  names = list(data.columns("ghosttrack"))
  rows = np.arange(len(data.label))
  p = paths.for_config(config, workdir)
  manifest = {
      "schema_version": SCHEMA_VERSION, "feature_set": "ghosttrack", "feature_names": names,
      "n_layers": data.meta.get("n_layers"), "layers": data.meta.get("layers"),
      "top_k": data.meta.get("top_k"), "pooling": data.meta.get("pooling"),
      "sae_manifest_hash": data.meta.get("sae_manifest_hash"),
      "examples_manifest_sha256": _hash_file(os.path.join(p.answers(config.qa.dataset), "manifest.json")),
      "dataset": config.qa.dataset, "mode": data.meta.get("mode"), "model": config.model.name,
      "n_train": int(len(rows)), "n_hallucinated": int(data.label.sum()),
      "sklearn_version": sklearn.__version__, "config": json.loads(config.to_json_best_effort()),
      "threshold_rule": "max Youden J on grouped inner-CV scores of all rows", "classifiers": {}}
  os.makedirs(out_dir, exist_ok=True)
  for clf in config.evaluate.classifiers:
    spec = Method(f"ghosttrack/{clf}", "ghosttrack", "", clf, (("ghosttrack", None),))
    fit = fit_with_selection(spec, data, rows, data.label, data.group_id, config.evaluate, config.evaluate.seed)
    entry = {"threshold": fit.threshold, "choice": fit.choice, "degenerate": fit.degenerate,
             "importances": classifiers.importances(fit.model, names)}
    if clf == "logistic" and not fit.degenerate:
      m = fit.model
      params = {"kept": m.named_steps["drop_constant"].get_support().tolist(),
                "mean": m.named_steps["scale"].mean_.tolist(), "scale": m.named_steps["scale"].scale_.tolist(),
                "coef": classifiers.scaled_coef(m).tolist(),
                "intercept": float(m.named_steps["clf"].intercept_[0]), "C": fit.choice.get("C")}
      io_utils.atomic_write_json(os.path.join(out_dir, "logistic.json"), params)
      entry["file"] = "logistic.json"
    else:
      with io_utils.atomic_path(os.path.join(out_dir, f"{clf}.joblib")) as tmp:
        joblib.dump(fit.model, tmp)
      entry["file"] = f"{clf}.joblib"
    manifest["classifiers"][clf] = entry
  io_utils.atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
  return manifest


class Detector:
  """A saved GhostTrack detector: `Detector.load(dir).predict_proba(x [n, 26])`."""

  def __init__(self, manifest: dict, classifier: str, directory: str):
    self.manifest = manifest
    self.classifier = classifier
    self.feature_names = list(manifest["feature_names"])
    self.threshold = manifest["classifiers"][classifier]["threshold"]
    entry = manifest["classifiers"][classifier]
    path = os.path.join(directory, entry["file"])
    if entry["file"].endswith(".json"):
      self._lr = io_utils.read_json(path)
      self._model = None
    else:
      import joblib  # pylint: disable=g-import-not-at-top
      self._lr = None
      self._model = joblib.load(path)

  @classmethod
  def load(cls, directory: str, classifier: str = "logistic", expect: dict | None = None) -> "Detector":
    """Loads and checks a detector; `expect` fields (n_layers, top_k, pooling, ...) must match."""
    path = os.path.join(directory, "manifest.json")
    if not os.path.exists(path):
      raise IncompleteStoreError(f"{path} not found: run the 'detect' stage first")
    manifest = io_utils.read_json(path)
    if manifest.get("schema_version") != SCHEMA_VERSION:
      raise StoreMismatchError(f"{path}: schema_version {manifest.get('schema_version')} != {SCHEMA_VERSION}")
    if classifier not in manifest["classifiers"]:
      raise StoreMismatchError(f"{path}: no {classifier!r} detector (have {sorted(manifest['classifiers'])})")
    for k, v in (expect or {}).items():
      if manifest.get(k) != v:
        raise StoreMismatchError(f"detector in {directory} has {k}={manifest.get(k)!r}, expected {v!r}")
    return cls(manifest, classifier, directory)

  @classmethod
  def for_config(cls, config, workdir: str, classifier: str | None = None, dataset: str | None = None):
    d = os.path.join(paths.for_config(config, workdir).detection, dataset or config.qa.dataset, "detector")
    return cls.load(d, classifier or "logistic")

  def _matrix(self, x, feature_names=None) -> np.ndarray:
    if isinstance(x, dict):
      x = np.array([[x[n] for n in self.feature_names]], np.float64)
    x = np.atleast_2d(np.asarray(x, np.float64))
    if feature_names is not None and list(feature_names) != self.feature_names:
      raise StoreMismatchError("feature names differ from the detector's schema "
                               f"({len(feature_names)} given, {len(self.feature_names)} expected)")
    if x.shape[1] != len(self.feature_names):
      raise StoreMismatchError(f"{x.shape[1]} features given; the detector expects {len(self.feature_names)}: "
                               f"{self.feature_names}")
    return x

  def predict_proba(self, x, feature_names=None) -> np.ndarray:
    """P(hallucinated) for x [n, F] (or one dict name -> value)."""
    x = self._matrix(x, feature_names)
    if self._lr is not None:
      kept = np.asarray(self._lr["kept"], bool)
      z = (x[:, kept] - np.asarray(self._lr["mean"])) / np.asarray(self._lr["scale"])
      logit = z @ np.asarray(self._lr["coef"]) + self._lr["intercept"]
      return 1.0 / (1.0 + np.exp(-logit))
    return classifiers.proba(self._model, x)

  def importances(self) -> dict | None:
    return self.manifest["classifiers"][self.classifier].get("importances")


# ---- scoring a new question ------------------------------------------------------------------

def score_question(config, workdir: str, question: str, answer: str | None = None,
                   classifier: str = "logistic", model=None, saes=None, detector: Detector | None = None,
                   dataset: str | None = None) -> dict:
  """P(hallucinated) for one question and answer, with the tracks behind it.

  Without `answer`, the model answers the question itself (greedy, the configured prompt and
  post-processing of the `answer` stage). With `answer`, the text is teacher-forced after the same prompt
  (given-text scoring). One teacher-forced pass through `tracking_stage.Extractor` gives the 26 metrics
  and the tracks; the saved detector (trained on `dataset`, default `config.qa.dataset`) scores them.

  Returns a JSON-ready dict: question, answer, mode, probability, threshold, decision, classifier,
  metrics (name -> value), per_layer (entropy/competition/dominance/density/list length per layer),
  tracks (birth, death, act, fid per track), answer_scalars (NLL, entropy), detector provenance.
  """
  from ghosttrack_jax import tracking_stage  # pylint: disable=g-import-not-at-top
  if model is None:
    from ghosttrack_jax import lm  # pylint: disable=g-import-not-at-top
    model = lm.load_model(config.model)
  if saes is None:
    from ghosttrack_jax import sae_train  # pylint: disable=g-import-not-at-top
    saes = sae_train.load_trained_saes(config, workdir)
  if detector is None:
    d = os.path.join(paths.for_config(config, workdir).detection, dataset or config.qa.dataset, "detector")
    detector = Detector.load(d, classifier, expect={"n_layers": int(model.n_layers),
                                                    "top_k": int(config.tracking.top_k),
                                                    "pooling": config.tracking.pooling})
  sae_hash = tracking_stage.sae_fingerprint(saes)
  if detector.manifest.get("sae_manifest_hash") not in (None, sae_hash):
    raise StoreMismatchError("the detector was trained on features of other SAEs "
                             f"({detector.manifest.get('sae_manifest_hash')} != {sae_hash}); rerun track/detect")
  fmt = answers.prompt_format(config.qa, model.tokenizer)
  prompt = fmt.render(question)
  if answer is None:
    gen = model.generate([prompt], max_new_tokens=config.qa.max_new_tokens, batch_size=1)[0]
    moved, ans_ids, flags = answers.postprocess(answers._gen_ids(gen), model.tokenizer,  # pylint: disable=protected-access
                                                answers.stop_ids(model), config.qa.get("cut_first_sentence", True))
    prompt_ids = answers._gen_prompt_ids(gen, model, prompt) + moved  # pylint: disable=protected-access
    mode = "own_answer"
  else:
    prompt_ids = [int(t) for t in model.encode(prompt)]
    ans_ids = answers._encode_continuation(model.tokenizer, fmt.answer_prefix() + answer.strip())  # pylint: disable=protected-access
    flags, mode = [], "given_text"
  text = model.tokenizer.decode(ans_ids).strip()
  if not ans_ids or not text:
    return {"question": question, "answer": text, "mode": mode, "probability": None, "flags": flags + ["empty"],
            "note": "empty answer: nothing to score"}
  cfg = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
  with cfg.unlocked() if hasattr(cfg, "unlocked") else _nullcontext():
    cfg.evaluate.ablations = False  # only the configured tracker is needed here
  extractor = tracking_stage.Extractor(model, saes, cfg)
  ex = {"id": "query", "prompt_ids": prompt_ids, "answer_ids": ans_ids}
  batch = tracking_stage.make_batch([ex], np.array([0]), 1, model.pad_id, int(model.max_positions))
  out = extractor(batch)
  x = np.asarray(out["X__ghosttrack"][0], np.float64)
  prob = float(detector.predict_proba(x[None])[0])
  m = int(out["n_tracks"][0])
  per_layer = {k: np.asarray(out["layer_" + k][0]).tolist() for k in tracking_stage.PER_LAYER_STATS}
  per_layer["list_length"] = np.asarray(out["layer_list_length"][0]).tolist()
  sc = np.asarray(out["scalars"][0])
  return {
      "question": question, "answer": text, "mode": mode, "flags": flags,
      "probability": prob, "threshold": detector.threshold,
      "decision": "hallucinated" if prob >= detector.threshold else "correct",
      "classifier": detector.classifier,
      "metrics": dict(zip(detector.feature_names, x.tolist())),
      "per_layer": per_layer, "layers": detector.manifest.get("layers"),
      "tracks": {"birth": out["trk_birth"][0, :m].tolist(), "death": out["trk_death"][0, :m].tolist(),
                 "act": np.round(out["trk_act"][0, :m], 5).tolist(), "fid": out["trk_fid"][0, :m].tolist()},
      "answer_scalars": {"mean_nll": float(sc[0]), "max_nll": float(sc[1]), "mean_entropy": float(sc[2])},
      "detector": {"dataset": detector.manifest.get("dataset"), "mode": detector.manifest.get("mode"),
                   "n_train": detector.manifest.get("n_train"), "model": detector.manifest.get("model")},
  }


class _nullcontext:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False
