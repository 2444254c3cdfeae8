"""The track stage's outputs and their one owner (schema: docs/DESIGN.md "Feature tables").

`results/<model>/tracking/<dataset>/` holds:
  features.npz + features.json   the feature table every detector reads (plain arrays, no pickles)
  summaries.npz                  per-example, per-layer track statistics (dashboards)
  tracks.npz                     full tracks of a subset of examples (case studies)
  degeneracy.json                constant / near-constant metrics and pooled-activation quantiles
  DONE                           written last, with the SHA-256 of each file above
Every other module reads these files through the `load_*` functions here, which check each file against
its checksum first (DamagedOutputError naming the file and the fix).
"""

import os

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths

SCHEMA_VERSION = 1  # of features.json
FEATURES, META, SUMMARIES, TRACKS, DEGENERACY = (
  "features.npz",
  "features.json",
  "summaries.npz",
  "tracks.npz",
  "degeneracy.json",
)


def directory(config, workdir: str, dataset: str | None = None) -> str:
  return os.path.join(paths.for_config(config, workdir).tracking, dataset or config_lib.question_set(config))


def _savez_compressed(path: str, arrays: dict) -> None:
  with atomic_io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


def _load_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def save(out_dir: str, features: dict, meta: dict, summaries: dict, tracks: dict, degeneracy: dict) -> None:
  """Writes every output of the stage (`mark_done` completes the folder)."""
  _savez_compressed(os.path.join(out_dir, FEATURES), features)
  atomic_io.atomic_write_json(os.path.join(out_dir, META), meta)
  _savez_compressed(os.path.join(out_dir, SUMMARIES), summaries)
  _savez_compressed(os.path.join(out_dir, TRACKS), tracks)
  atomic_io.atomic_write_json(os.path.join(out_dir, DEGENERACY), degeneracy)


FILES = (FEATURES, META, SUMMARIES, TRACKS, DEGENERACY)


def mark_done(out_dir: str, meta: dict) -> None:
  atomic_io.write_done(
    out_dir,
    {
      "n_examples": int(meta["n_examples"]),
      "n_layers": int(meta["n_layers"]),
      "feature_sets": list(meta["feature_sets"]),
    },
    files=[f for f in FILES if os.path.exists(os.path.join(out_dir, f))],
  )


def _fix(out_dir: str) -> str:
  return f"delete {out_dir} and rerun the 'track' stage (--stages=track and the stages after it)"


def verify(out_dir: str, names=FILES) -> None:
  """Checks a finished folder's files against the checksums in its DONE (DamagedOutputError otherwise)."""
  _require_done(out_dir)
  atomic_io.verify_done(out_dir, names, _fix(out_dir))


def _require_done(out_dir: str) -> None:
  if not atomic_io.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'track' stage first")


def load_meta(out_dir: str) -> dict:
  """features.json of a finished track stage, schema-checked."""
  verify(out_dir, (META,))
  meta = atomic_io.read_json(os.path.join(out_dir, META))
  if meta.get("schema_version") != SCHEMA_VERSION:
    raise StoreMismatchError(
      f"{out_dir}/{META} schema_version={meta.get('schema_version')}, expected "
      f"{SCHEMA_VERSION}: rerun the 'track' stage"
    )
  return meta


def load_features(out_dir: str) -> tuple[dict, dict]:
  """(arrays of features.npz, features.json) of a finished track stage."""
  meta = load_meta(out_dir)
  verify(out_dir, (FEATURES,))
  arrays = _load_npz(os.path.join(out_dir, FEATURES))
  for name in meta["feature_sets"]:
    if "X__" + name not in arrays:
      raise StoreMismatchError(f"{META} lists {name!r} but {FEATURES} has no X__{name}")
  return arrays, meta


def load_summaries(out_dir: str) -> dict | None:
  """summaries.npz, or None when the stage did not write it."""
  verify(out_dir, (SUMMARIES,))
  path = os.path.join(out_dir, SUMMARIES)
  return _load_npz(path) if os.path.exists(path) else None


def load_tracks(out_dir: str) -> dict | None:
  """tracks.npz (the tracked subset), or None when absent."""
  verify(out_dir, (TRACKS,))
  path = os.path.join(out_dir, TRACKS)
  return _load_npz(path) if os.path.exists(path) else None


def load_report(out_dir: str) -> dict | None:
  """degeneracy.json (per-set degeneracy, pooled-activation quantiles, association shares), or None
  when the stage did not write it."""
  verify(out_dir, (DEGENERACY,))
  path = os.path.join(out_dir, DEGENERACY)
  return atomic_io.read_json(path) if os.path.exists(path) else None
