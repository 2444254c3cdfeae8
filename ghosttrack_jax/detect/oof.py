"""The detect stage's out-of-fold outputs and their one owner (schema: docs/DESIGN.md "Detection outputs").

`results/<model>/detection/<dataset>/` holds:
  methods/<method>.npz + .json   one finished method (scores [R, N], thresholds [R, K]; choices), for resume
  scores.npz                     every method's out-of-fold scores: methods, example_id, group_id, label,
                                 folds [R, N], scores [M, R, N], thresholds [M, R, K]
  predictions.csv                the same scores, one row per (method, example, repeat)
  methods.json                   mode, dataset, and per method its description, choices, degenerate folds
  label_variants.npz + .json     GhostTrack and scalar baselines re-scored under other label methods
  loro.npz                       relation-held-out scores of some methods (wikidata): methods, relations,
                                 row_relation [N], folds [1, N] (the fold that held the row's relation out),
                                 scores [M, 1, N], thresholds [M, 1, n_folds]
  detector/                      the final detectors (detect.detector)
  DONE                           written last (`mark_done`), with the SHA-256 of each file above
The loads check each file against its checksum first (DamagedOutputError naming the file and the fix).
"""

import logging
import os
import re
import zipfile

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import DamagedOutputError, IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths

SCHEMA_VERSION = 1  # of methods.json (scores.npz's arrays are fixed with it); absent = 1 (written before)
SCORES, PREDICTIONS, METHODS, VARIANTS_NPZ, VARIANTS_JSON, LORO = (
  "scores.npz",
  "predictions.csv",
  "methods.json",
  "label_variants.npz",
  "label_variants.json",
  "loro.npz",
)


def directory(config, workdir: str, dataset: str | None = None) -> str:
  return os.path.join(paths.for_config(config, workdir).detection, dataset or config_lib.question_set(config))


def safe_name(name: str) -> str:
  """A method or label-method name as a file-name and npz-key component."""
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


# ---- one finished method (resume) ------------------------------------------------------------------


def _part_paths(out_dir: str, method: str) -> tuple[str, str]:
  base = os.path.join(out_dir, "methods", safe_name(method))
  return base + ".npz", base + ".json"


def load_method(out_dir: str, method: str, key: str) -> dict | None:
  """A method finished by an earlier (interrupted) run under the same `key` (detect.stage.part_key: the
  CV settings and the feature table), or None: also when it was made under another key or its files
  cannot be read (a damaged or outdated part is logged and recomputed, never reused)."""
  npz, info = _part_paths(out_dir, method)
  if not (os.path.exists(npz) and os.path.exists(info)):
    return None
  try:
    record = atomic_io.read_json(info)
    if record.get("key") != key:
      logging.info(
        "detect: the saved part of %s was made with other settings or features; recomputing it", method
      )
      return None
    with np.load(npz, allow_pickle=False) as z:
      return {"scores": z["scores"], "thresholds": z["thresholds"], **record}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, DamagedOutputError) as e:
    logging.warning("detect: the saved part of %s cannot be read (%s); recomputing it", method, e)
    return None


def save_method(out_dir: str, method: str, result: dict, key: str) -> None:
  npz, info = _part_paths(out_dir, method)
  os.makedirs(os.path.dirname(npz), exist_ok=True)
  atomic_io.atomic_save_npz(npz, scores=result["scores"], thresholds=result["thresholds"])
  atomic_io.atomic_write_json(
    info, {"choices": result["choices"], "degenerate_folds": result["degenerate_folds"], "key": key}
  )


# ---- every method ----------------------------------------------------------------------------------


def save_scores(out_dir: str, methods, results: dict, data, dataset: str) -> None:
  """scores.npz, predictions.csv and methods.json for `methods` (detect.methods.Method, report order)."""
  names = [m.name for m in methods]
  atomic_io.atomic_save_npz(
    os.path.join(out_dir, SCORES),
    methods=np.array(names),
    example_id=data.example_id,
    group_id=data.group_id,
    label=data.label.astype(np.int8),
    folds=data.folds.astype(np.int16),
    scores=np.stack([results[n]["scores"] for n in names]).astype(np.float64),
    thresholds=np.stack([results[n]["thresholds"] for n in names]),
  )
  lines = ["method,example_id,group_id,repeat,fold,split,score,label"]
  for name in names:
    s = results[name]["scores"]
    for r in range(s.shape[0]):
      for i in range(s.shape[1]):
        lines.append(
          f"{name},{data.example_id[i]},{data.group_id[i]},{r},{data.folds[r, i]},test,"
          f"{s[r, i]:.6g},{data.label[i]}"
        )
  atomic_io.atomic_write_text(os.path.join(out_dir, PREDICTIONS), "\n".join(lines) + "\n")
  atomic_io.atomic_write_json(
    os.path.join(out_dir, METHODS),
    {
      "schema_version": SCHEMA_VERSION,
      "mode": data.meta.get("mode"),
      "dataset": dataset,
      "methods": {
        m.name: {
          **m.describe(),
          "choices": results[m.name]["choices"],
          "degenerate_folds": results[m.name]["degenerate_folds"],
        }
        for m in methods
      },
    },
  )


def save_label_variants(out_dir: str, arrays: dict, info: dict) -> None:
  atomic_io.atomic_save_npz(os.path.join(out_dir, VARIANTS_NPZ), **arrays)
  atomic_io.atomic_write_json(os.path.join(out_dir, VARIANTS_JSON), info)


def save_loro(out_dir: str, results: dict, folds: np.ndarray, row_relation) -> None:
  names = list(results)
  atomic_io.atomic_save_npz(
    os.path.join(out_dir, LORO),
    methods=np.array(names),
    relations=np.array(sorted(set(np.asarray(row_relation).tolist()))),
    row_relation=np.asarray(row_relation),
    folds=np.asarray(folds, np.int16),
    scores=np.stack([results[n]["scores"] for n in names]).astype(np.float64),
    thresholds=np.stack([results[n]["thresholds"] for n in names]),
  )


def load_loro(out_dir: str) -> dict | None:
  """loro.npz of a finished detect stage as a dict of arrays, or None when the set has no relations."""
  verify(out_dir, (LORO,))
  if not os.path.exists(os.path.join(out_dir, LORO)):
    return None
  with np.load(os.path.join(out_dir, LORO), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


FILES = (SCORES, PREDICTIONS, METHODS, VARIANTS_NPZ, VARIANTS_JSON, LORO)


def mark_done(out_dir: str, n_methods: int) -> None:
  """Completes the folder: DONE with the checksum of every file above (call after everything is written)."""
  files = [f for f in FILES if os.path.exists(os.path.join(out_dir, f))]
  atomic_io.write_done(out_dir, {"n_methods": int(n_methods)}, files=files)


def _fix(out_dir: str) -> str:
  return f"delete {out_dir} and rerun the 'detect' stage (--stages=detect and the stages after it)"


def verify(out_dir: str, names=FILES) -> None:
  """Checks a finished folder's files against the checksums in its DONE (DamagedOutputError otherwise)."""
  _require_done(out_dir)
  atomic_io.verify_done(out_dir, names, _fix(out_dir))


def _require_done(out_dir: str) -> None:
  if not atomic_io.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'detect' stage first")


def load_scores(out_dir: str) -> dict:
  """scores.npz of a finished detect stage as a dict of arrays."""
  verify(out_dir, (SCORES,))
  with np.load(os.path.join(out_dir, SCORES), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_methods(out_dir: str) -> dict:
  """methods.json of a finished detect stage, checksum- and schema-checked."""
  verify(out_dir, (METHODS,))
  m = atomic_io.read_json(os.path.join(out_dir, METHODS))
  if m.get("schema_version", 1) != SCHEMA_VERSION:
    raise StoreMismatchError(
      f"{out_dir}/{METHODS} schema_version={m.get('schema_version')}, expected {SCHEMA_VERSION}: "
      "rerun the 'detect' stage"
    )
  return m


def load_label_variants(out_dir: str) -> tuple[dict, dict] | None:
  """(info, arrays) of label_variants, or None when the stage wrote none."""
  verify(out_dir, (VARIANTS_NPZ, VARIANTS_JSON))
  if not os.path.exists(os.path.join(out_dir, VARIANTS_JSON)):
    return None
  with np.load(os.path.join(out_dir, VARIANTS_NPZ), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  return atomic_io.read_json(os.path.join(out_dir, VARIANTS_JSON)), arrays
