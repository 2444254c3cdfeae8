"""The examples table of the `answer` stage and its one owner (schema: docs/DESIGN.md "Examples table").

`cache/<model>/answers/<dataset>/` holds examples.jsonl, excluded.jsonl, folds.npz, manifest.json,
audit_sample.jsonl, question_scores.npz (the answer-level signals of answer.stage.question_scores: sampling
scores, P(True), subject familiarity; one [N] array per name beside example_id) and DONE, written last
with the SHA-256 of each of them. Every other module reads them
through `load_*` here, which checks the file against its checksum first (DamagedOutputError otherwise).
"""

import json
import os

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths

SCHEMA_VERSION = 1
EXAMPLES, EXCLUDED, FOLDS, MANIFEST, AUDIT, SCORES = (
  "examples.jsonl",
  "excluded.jsonl",
  "folds.npz",
  "manifest.json",
  "audit_sample.jsonl",
  "question_scores.npz",
)


def _jsonl(rows) -> str:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def save(
  out_dir: str,
  examples: list[dict],
  excluded: list[dict],
  folds: np.ndarray,
  manifest: dict,
  audit_rows,
  scores: dict | None = None,
) -> None:
  """Writes the whole table, then DONE. `examples` carry group_id/fold/folds; `folds` is [R, N] int16;
  `audit_rows` are the rows copied to audit_sample.jsonl for a hand audit (`audit_label` to fill in);
  `scores` maps a question-score name to its [N] values in example order."""
  scores = scores or {}
  for name, v in scores.items():
    if np.shape(v) != (len(examples),):
      raise ValueError(f"question score {name!r} has shape {np.shape(v)}, expected ({len(examples)},)")
  atomic_io.atomic_save_npz(
    os.path.join(out_dir, SCORES),
    example_id=np.array([e["id"] for e in examples]),
    **{"score__" + k: np.asarray(v, np.float64) for k, v in scores.items()},
  )
  atomic_io.atomic_write_text(os.path.join(out_dir, EXAMPLES), _jsonl(examples))
  atomic_io.atomic_write_text(os.path.join(out_dir, EXCLUDED), _jsonl(excluded))
  atomic_io.atomic_save_npz(
    os.path.join(out_dir, FOLDS),
    example_id=np.array([e["id"] for e in examples]),
    group_id=np.array([e["group_id"] for e in examples], np.int64),
    label=np.array([e["label"] for e in examples], np.int8),
    folds=folds,
  )
  keys = ("id", "question", "answer_text", "gold", "label", "label_method")
  atomic_io.atomic_write_text(
    os.path.join(out_dir, AUDIT),
    _jsonl({**{k: examples[i][k] for k in keys}, "audit_label": None} for i in audit_rows),
  )
  atomic_io.atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
  atomic_io.write_done(out_dir, {"n_examples": len(examples)}, files=FILES)


FILES = (EXAMPLES, EXCLUDED, FOLDS, MANIFEST, AUDIT, SCORES)  # every file of the table, checksummed in DONE


def _fix(out_dir: str) -> str:
  return f"delete {out_dir} and rerun the 'answer' stage (--stages=answer and the stages after it)"


def verify(out_dir: str, names=FILES) -> None:
  """Checks a finished table's files against the checksums in its DONE (DamagedOutputError otherwise)."""
  if not atomic_io.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'answer' stage first")
  atomic_io.verify_done(out_dir, names, _fix(out_dir))


def _checked(config, workdir: str, dataset: str | None, name: str) -> str:
  """The path of `name` in a finished, undamaged table."""
  out_dir = paths.for_config(config, workdir).answers(dataset or config_lib.question_set(config))
  verify(out_dir, (name,))
  return os.path.join(out_dir, name)


def load_examples(config, workdir: str, dataset: str | None = None) -> list[dict]:
  """The examples table of a finished `answer` stage (IncompleteStoreError otherwise)."""
  with open(_checked(config, workdir, dataset, EXAMPLES), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def load_folds(config, workdir: str, dataset: str | None = None) -> dict:
  """folds.npz of a finished `answer` stage as a dict of arrays."""
  with np.load(_checked(config, workdir, dataset, FOLDS), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_question_scores(config, workdir: str, dataset: str | None = None) -> tuple[np.ndarray, dict]:
  """(example_id [N], {name: [N] float64}) of a finished `answer` stage (names: answer.stage.question_scores)."""
  with np.load(_checked(config, workdir, dataset, SCORES), allow_pickle=False) as z:
    return z["example_id"], {k[len("score__") :]: z[k] for k in z.files if k.startswith("score__")}


def manifest_sha256(config, workdir: str, dataset: str | None = None) -> str:
  """SHA-256 of a finished table's manifest.json (the provenance later stages record)."""
  return atomic_io.file_sha256(_checked(config, workdir, dataset, MANIFEST))


def load_manifest(config, workdir: str, dataset: str | None = None) -> dict:
  out_dir = paths.for_config(config, workdir).answers(dataset or config_lib.question_set(config))
  m = atomic_io.read_json(_checked(config, workdir, dataset, MANIFEST))
  if m["model"]["name"] != config.model.name:
    raise StoreMismatchError(
      f"{out_dir} was made for model {m['model']['name']!r}, not {config.model.name!r}"
    )
  return m
