"""The final detectors: fit on every row, saved under `detector/` with a manifest, and loaded back.

`detector/manifest.json` (feature names, schema, L, k, pooling, SAE/examples manifest hashes, config,
thresholds, importances), `logistic.json` (the primary detector's parameters; no pickle) and
`<classifier>.joblib` for the others (scikit-learn objects; load only files you made), and `DONE` last with
the SHA-256 of each file, checked by every load (DamagedOutputError). This module is the one owner of that
folder.
"""

import json
import logging
import os

import joblib
import numpy as np
import sklearn

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import classifiers, cv
from ghosttrack_jax.detect.methods import FeatureData, Method
from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths

SCHEMA_VERSION = 1  # of detector/manifest.json


def directory(detection_dir: str) -> str:
  """The detector folder inside a dataset's detection folder."""
  return os.path.join(detection_dir, "detector")


def save_final_detectors(config, data: FeatureData, out_dir: str, workdir: str) -> dict:
  """Fits every configured classifier on all rows of the GhostTrack set and saves it with a manifest."""
  names = list(data.columns("ghosttrack"))
  rows = np.arange(len(data.label))
  manifest = {
    "schema_version": SCHEMA_VERSION,
    "feature_set": "ghosttrack",
    "feature_names": names,
    "n_layers": data.meta.get("n_layers"),
    "layers": data.meta.get("layers"),
    "top_k": data.meta.get("top_k"),
    "pooling": data.meta.get("pooling"),
    "sae_manifest_hash": data.meta.get("sae_manifest_hash"),
    "examples_manifest_sha256": examples_lib.manifest_sha256(config, workdir),
    # The tracker's calibrated birth thresholds (config.tracking.birth_threshold_quantile): scoring a
    # new answer must use the thresholds these features were computed with.
    "birth_thresholds": data.meta.get("birth_thresholds"),
    "dataset": config_lib.question_set(config),
    "mode": data.meta.get("mode"),
    "model": config.model.name,
    "n_train": int(len(rows)),
    "n_hallucinated": int(data.label.sum()),
    "sklearn_version": sklearn.__version__,
    "config": json.loads(config.to_json_best_effort()),
    "threshold_rule": "max Youden J on grouped inner-CV scores of all rows",
    "classifiers": {},
  }
  os.makedirs(out_dir, exist_ok=True)
  atomic_io.clear_done(out_dir)  # a refit replaces the folder's files: it is incomplete until DONE
  for clf in config.evaluate.classifiers:
    spec = Method(f"ghosttrack/{clf}", "ghosttrack", "", clf, (("ghosttrack", None),))
    fit = cv.fit_with_selection(
      spec, data, rows, data.label, data.group_id, config.evaluate, config.evaluate.seed
    )
    entry = {
      "threshold": fit.threshold,
      "choice": fit.choice,
      "degenerate": fit.degenerate,
      "importances": classifiers.importances(fit.model, names),
    }
    if clf == "logistic" and not fit.degenerate:
      m = fit.model
      params = {
        "kept": m.named_steps["drop_constant"].get_support().tolist(),
        "mean": m.named_steps["scale"].mean_.tolist(),
        "scale": m.named_steps["scale"].scale_.tolist(),
        "coef": classifiers.scaled_coef(m).tolist(),
        "intercept": float(m.named_steps["clf"].intercept_[0]),
        "C": fit.choice.get("C"),
      }
      atomic_io.atomic_write_json(os.path.join(out_dir, "logistic.json"), params)
      entry["file"] = "logistic.json"
    else:
      with atomic_io.atomic_path(os.path.join(out_dir, f"{clf}.joblib")) as tmp:
        joblib.dump(fit.model, tmp)
      entry["file"] = f"{clf}.joblib"
    manifest["classifiers"][clf] = entry
  atomic_io.atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
  files = [MANIFEST] + [e["file"] for e in manifest["classifiers"].values()]
  atomic_io.write_done(out_dir, {"classifiers": list(manifest["classifiers"])}, files=files)
  return manifest


MANIFEST = "manifest.json"


def _fix(directory: str) -> str:
  return f"delete {os.path.dirname(directory)} and rerun the 'detect' stage (and the stages after it)"


def verify(directory: str, names=None) -> None:
  """Checks the saved detectors' files (all, or `names`) against the checksums in the folder's DONE."""
  if not atomic_io.is_done(directory):
    if atomic_io.is_done(os.path.dirname(directory)):  # finished before detectors had their own DONE
      logging.warning("%s was written before checksums were recorded: not verified", directory)
      return
    raise IncompleteStoreError(f"{directory} has no DONE marker: run the 'detect' stage first")
  names = atomic_io.recorded_files(directory, _fix(directory)) if names is None else names
  atomic_io.verify_done(directory, names, _fix(directory))


def load_manifest(directory: str) -> dict | None:
  """detector/manifest.json, or None when the detect stage fitted no final detector."""
  if not os.path.exists(os.path.join(directory, MANIFEST)):
    return None
  verify(directory, (MANIFEST,))
  return atomic_io.read_json(os.path.join(directory, MANIFEST))


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
      self._lr = atomic_io.read_json(path)
      self._model = None
    else:
      self._lr = None
      self._model = joblib.load(path)

  @classmethod
  def load(cls, directory: str, classifier: str = "logistic", expect: dict | None = None) -> "Detector":
    """Loads and checks a detector; `expect` fields (n_layers, top_k, pooling, ...) must match."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise IncompleteStoreError(f"{path} not found: run the 'detect' stage first")
    verify(directory, (MANIFEST,))
    manifest = atomic_io.read_json(path)
    if manifest.get("schema_version") != SCHEMA_VERSION:
      raise StoreMismatchError(f"{path}: schema_version {manifest.get('schema_version')} != {SCHEMA_VERSION}")
    if classifier not in manifest["classifiers"]:
      raise StoreMismatchError(f"{path}: no {classifier!r} detector (have {sorted(manifest['classifiers'])})")
    for k, v in (expect or {}).items():
      if manifest.get(k) != v:
        raise StoreMismatchError(f"detector in {directory} has {k}={manifest.get(k)!r}, expected {v!r}")
    verify(directory, (manifest["classifiers"][classifier]["file"],))
    return cls(manifest, classifier, directory)

  @classmethod
  def for_config(cls, config, workdir: str, classifier: str | None = None, dataset: str | None = None):
    d = directory(
      os.path.join(paths.for_config(config, workdir).detection, dataset or config_lib.question_set(config))
    )
    return cls.load(d, classifier or "logistic")

  def _matrix(self, x, feature_names=None) -> np.ndarray:
    if isinstance(x, dict):
      x = np.array([[x[n] for n in self.feature_names]], np.float64)
    x = np.atleast_2d(np.asarray(x, np.float64))
    if feature_names is not None and list(feature_names) != self.feature_names:
      raise StoreMismatchError(
        "feature names differ from the detector's schema "
        f"({len(feature_names)} given, {len(self.feature_names)} expected)"
      )
    if x.shape[1] != len(self.feature_names):
      raise StoreMismatchError(
        f"{x.shape[1]} features given; the detector expects {len(self.feature_names)}: {self.feature_names}"
      )
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
