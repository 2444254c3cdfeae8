"""Compares two pipeline workdirs file by file: arrays exactly, JSON by value, text line by line, everything
else byte for byte, ignoring only what is expected to differ between two runs of the same code and config:
wall times, the code-commit record of the report, and the training log (which repeats steps after a resume).
"""

import json
import os
import re

import numpy as np

# JSON keys whose values are wall times (seconds) or the code commit, not results.
IGNORED_KEYS = frozenset(
  {
    "train_seconds",  # results/<model>/sae/metrics.json: SAE training wall time
    "created",  # cache/<model>/hidden_states/meta.json: when the store was created (UTC)
    "code",  # report.json: the commit and whether the checkout is dirty
    "files_sha256",  # a DONE record's checksums: every listed file is compared itself
  }
)
# Folders whose content is a log of the run, not an output: compared by name only (both must exist).
LOG_DIRS = (os.path.join("results", "{model}", "sae", "train_log"),)
# Orbax checkpoints hold the training state and run metadata (timestamps): the steps kept must agree;
# the final parameters are the SAE export, compared byte for byte.
CHECKPOINTS = os.path.join("checkpoints", "{model}")
# Lines of text outputs that carry a wall time or the code commit (report.md/html, sae/metrics.md).
_IGNORED_LINE = re.compile(r"Code commit|train_seconds")


def _files(root: str) -> set[str]:
  out = set()
  for d, _, names in os.walk(root):
    for n in names:
      out.add(os.path.relpath(os.path.join(d, n), root))
  return out


def _strip(obj):
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if k not in IGNORED_KEYS}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def _json_rows(path: str):
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".jsonl"):
    return [_strip(json.loads(line)) for line in text.splitlines() if line.strip()]
  return _strip(json.loads(text))


def _text_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line for line in f.read().splitlines() if not _IGNORED_LINE.search(line)]


def _same_npz(a: str, b: str) -> bool:
  with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
    if sorted(za.files) != sorted(zb.files):
      return False
    for k in za.files:
      x, y = za[k], zb[k]
      if x.dtype != y.dtype or x.shape != y.shape:
        return False
      if not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
        return False
  return True


def _same_bytes(a: str, b: str) -> bool:
  with open(a, "rb") as fa, open(b, "rb") as fb:
    return fa.read() == fb.read()


def differences(a: str, b: str, model: str) -> list[str]:
  """Every difference between workdirs `a` and `b` (relative paths with what differs); [] when equal."""
  logs = [d.format(model=model) for d in LOG_DIRS]
  ckpt = CHECKPOINTS.format(model=model)

  def kind(rel: str) -> str:
    if any(rel.startswith(d + os.sep) for d in logs):
      return "log"
    if rel.startswith(ckpt + os.sep) and not rel.startswith(os.path.join(ckpt, "saelens") + os.sep):
      return "checkpoint"
    return "output"

  fa, fb = _files(a), _files(b)
  out = []
  for rel in sorted(fa ^ fb):
    if kind(rel) == "output":
      out.append(f"{rel}: only in {'the first' if rel in fa else 'the second'} workdir")
  steps_a = {r.split(os.sep)[2] for r in fa if kind(r) == "checkpoint"}
  steps_b = {r.split(os.sep)[2] for r in fb if kind(r) == "checkpoint"}
  if steps_a != steps_b:
    out.append(f"{ckpt}: checkpoints {sorted(steps_a)} vs {sorted(steps_b)}")
  for rel in sorted(fa & fb):
    if kind(rel) != "output":
      continue
    pa, pb = os.path.join(a, rel), os.path.join(b, rel)
    name = os.path.basename(rel)
    if name.endswith(".npz"):
      same = _same_npz(pa, pb)
    elif name.endswith((".json", ".jsonl")) or name in ("DONE", "COMPLETE"):
      same = _json_rows(pa) == _json_rows(pb)
    elif name.endswith((".md", ".html", ".csv", ".txt")):
      same = _text_lines(pa) == _text_lines(pb)
    else:
      same = _same_bytes(pa, pb)
    if not same:
      out.append(f"{rel}: contents differ")
  return out
