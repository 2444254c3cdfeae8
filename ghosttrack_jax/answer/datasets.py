"""Loaders for the question-answer sets shipped in `data/qa/` (docs/method.md §6.5).

Each loader returns a list of `QAItem`: the question, its gold (correct) answers and, where the set has
them, incorrect reference answers. Files are found relative to the working directory first and then
relative to the repository root, so `data/qa/...` works from anywhere inside the checkout. Missing,
empty or malformed files raise `DataError` naming the file, the line and what to do.

Sets:
  * NQ-open dev (default, 3,610 questions, gold alias lists) and the EfficientQA dev file (1,800; the
    few-shot exemplar pool).
  * TruthfulQA (790-row January 2025 CSV, or the 817-row v1 release with a UTF-8 BOM): correct answers
    = "Best Answer" plus "Correct Answers"; incorrect = "Best Incorrect Answer" (790 version only)
    plus "Incorrect Answers"; `;`-separated lists.
  * HaluEval QA (one-turn, multi-turn, or both): right vs hallucinated answer; the `knowledge` field is
    kept in `meta` but never used by default.
"""

import csv
import dataclasses
import io
import json
import os

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import DataError
from ghosttrack_jax.runtime import atomic_io, paths

REPO_ROOT = paths.REPO_ROOT

NQ_OPEN_DEV = "data/qa/NQ-open.dev.jsonl"
NQ_OPEN_EFFICIENTQA = "data/qa/NQ-open.efficientqa.dev.1.1.jsonl"
TRUTHFULQA = "data/qa/TruthfulQA.csv"
TRUTHFULQA_V1 = "data/qa/TruthfulQA_v1_817.csv"
HALUEVAL = config_lib.HALUEVAL_FILES


@dataclasses.dataclass(frozen=True)
class QAItem:
  """One question with its references.

  Attributes:
    qid: stable id within the set (`<set>-<row>`).
    question: question text, stripped.
    gold: correct answers (NQ aliases; TruthfulQA best + correct answers; HaluEval right answer).
    incorrect: incorrect reference answers (TruthfulQA, HaluEval); empty for NQ-open.
    best: TruthfulQA "Best Answer" (None elsewhere).
    meta: other fields (TruthfulQA type/category/source, HaluEval knowledge and subset).
  """

  qid: str
  question: str
  gold: tuple[str, ...]
  incorrect: tuple[str, ...] = ()
  best: str | None = None
  meta: dict = dataclasses.field(default_factory=dict, compare=False)


def resolve(path: str) -> str:
  """Returns an existing path: as given, else relative to the repository root; DataError otherwise."""
  if os.path.isabs(path):
    candidates = [path]
  else:
    candidates = [os.path.abspath(path), os.path.join(REPO_ROOT, path)]
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise DataError(
    f"QA file {path!r} not found (looked in {candidates}). The QA sets ship in the "
    "repository under data/qa/; run from the checkout or give an absolute path."
  )


def sha256(path: str) -> str:
  return atomic_io.file_sha256(resolve(path))


def _read_text(path: str) -> str:
  full = resolve(path)
  try:
    with open(full, encoding="utf-8-sig") as f:  # -sig strips the BOM of the 817-row TruthfulQA
      text = f.read()
  except UnicodeDecodeError as e:
    raise DataError(
      f"{full} is not UTF-8 text ({e}); re-download it from the source in data/README.md"
    ) from e
  if not text.strip():
    raise DataError(f"{full} is empty; re-download it from the source in data/README.md")
  return text


def _json_lines(path: str) -> list[dict]:
  rows = []
  for n, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(
        f"{path} line {n}: not valid JSON ({e.msg}); the file must hold one JSON object per line"
      ) from e
    if not isinstance(obj, dict):
      raise DataError(f"{path} line {n}: expected a JSON object, got {type(obj).__name__}")
    rows.append(obj)
  return rows


def _clean_list(values) -> tuple[str, ...]:
  out = []
  for v in values:
    v = " ".join(str(v).split())
    if v and v not in out:
      out.append(v)
  return tuple(out)


def load_nq_open(path: str = NQ_OPEN_DEV, limit: int = 0, prefix: str = "nq_open") -> list[QAItem]:
  """NQ-open JSON lines `{"question": str, "answer": [str, ...]}`; `limit` > 0 keeps the first rows."""
  items = []
  for n, row in enumerate(_json_lines(path), start=1):
    q, ans = row.get("question"), row.get("answer")
    if not isinstance(q, str) or not q.strip():
      raise DataError(f"{path} line {n}: missing or empty 'question'")
    if isinstance(ans, str):
      ans = [ans]
    if not isinstance(ans, list) or not _clean_list(ans):
      raise DataError(f"{path} line {n}: 'answer' must be a non-empty list of gold aliases")
    items.append(QAItem(f"{prefix}-{n - 1:06d}", " ".join(q.split()), _clean_list(ans)))
    if limit and len(items) >= limit:
      break
  if not items:
    raise DataError(f"{path}: no questions")
  return items


def _split_answers(cell: str) -> tuple[str, ...]:
  return _clean_list(p for p in (cell or "").split(";"))


def load_truthfulqa(path: str = TRUTHFULQA, limit: int = 0) -> list[QAItem]:
  """TruthfulQA CSV (790-row or 817-row release). Gold = best + correct answers, deduplicated."""
  text = _read_text(path)
  reader = csv.DictReader(io.StringIO(text))
  required = {"Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
  missing = required - set(reader.fieldnames or ())
  if missing:
    raise DataError(
      f"{path}: missing TruthfulQA columns {sorted(missing)} (found {reader.fieldnames}); "
      "use TruthfulQA.csv or TruthfulQA_v1_817.csv from data/qa/"
    )
  items = []
  for n, row in enumerate(reader):
    q = " ".join((row.get("Question") or "").split())
    best = " ".join((row.get("Best Answer") or "").split())
    if not q or not best:
      raise DataError(f"{path} data row {n + 1}: empty Question or Best Answer")
    correct = _clean_list((best,) + _split_answers(row["Correct Answers"]))
    incorrect = _split_answers(row["Incorrect Answers"])
    bi = " ".join((row.get("Best Incorrect Answer") or "").split())
    if bi:
      incorrect = _clean_list((bi,) + incorrect)
    if not incorrect:
      raise DataError(f"{path} data row {n + 1}: no incorrect answers")
    meta = {k: row.get(k, "") for k in ("Type", "Category", "Source") if k in row}
    items.append(QAItem(f"truthfulqa-{n:04d}", q, correct, incorrect, best, meta))
    if limit and len(items) >= limit:
      break
  if not items:
    raise DataError(f"{path}: no questions")
  return items


def load_halueval(subset: str = "one-turn", limit: int = 0) -> list[QAItem]:
  """HaluEval QA. `subset`: "one-turn", "multi-turn" or "both".

  With "both", the two files share all 500 questions and right answers (only the hallucinated answers
  differ), so they are merged per question: one item with both hallucinated answers.
  """
  if subset not in config_lib.HALUEVAL_SUBSETS:
    raise DataError(f"HaluEval subset {subset!r}: use one of {config_lib.HALUEVAL_SUBSETS}")
  subsets = ("one-turn", "multi-turn") if subset == "both" else (subset,)
  merged: dict[str, dict] = {}
  order = []
  for s in subsets:
    path = HALUEVAL[s]
    for n, row in enumerate(_json_lines(path), start=1):
      for key in ("question", "right_answer", "hallucinated_answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
          raise DataError(f"{path} line {n}: missing or empty {key!r}")
      q = " ".join(row["question"].split())
      if q not in merged:
        merged[q] = {"right": [], "hallu": [], "knowledge": row.get("knowledge", ""), "subsets": []}
        order.append(q)
      merged[q]["right"].append(row["right_answer"])
      merged[q]["hallu"].append(row["hallucinated_answer"])
      merged[q]["subsets"].append(s)
  items = []
  for i, q in enumerate(order):
    m = merged[q]
    items.append(
      QAItem(
        f"halueval-{i:04d}",
        q,
        _clean_list(m["right"]),
        _clean_list(m["hallu"]),
        None,
        {"knowledge": m["knowledge"], "subsets": m["subsets"]},
      )
    )
    if limit and len(items) >= limit:
      break
  return items


def load(dataset: str, qa_cfg=None, limit: int = 0) -> list[QAItem]:
  """Loads the set behind `config.qa.dataset` (given-text sets load the same questions)."""
  get = (lambda k, d: qa_cfg.get(k, d)) if qa_cfg is not None else (lambda k, d: d)
  if dataset == "nq_open":
    return load_nq_open(get("nq_open_file", NQ_OPEN_DEV), limit)
  if dataset in ("truthfulqa", "truthfulqa_given"):
    return load_truthfulqa(get("truthfulqa_file", TRUTHFULQA), limit)
  if dataset == "halueval_given":
    return load_halueval(get("halueval_subset", "one-turn"), limit)
  raise DataError(
    f"unknown QA dataset {dataset!r}: use nq_open, truthfulqa, truthfulqa_given or halueval_given"
  )


def data_files(dataset: str, qa_cfg=None) -> list[str]:
  """The files a dataset reads (for manifests/hashes)."""
  get = (lambda k, d: qa_cfg.get(k, d)) if qa_cfg is not None else (lambda k, d: d)
  if dataset == "nq_open":
    return [get("nq_open_file", NQ_OPEN_DEV), get("fewshot_file", NQ_OPEN_EFFICIENTQA)]
  if dataset in ("truthfulqa", "truthfulqa_given"):
    return [get("truthfulqa_file", TRUTHFULQA)]
  if dataset == "halueval_given":
    s = get("halueval_subset", "one-turn")
    return [HALUEVAL[x] for x in (("one-turn", "multi-turn") if s == "both" else (s,))]
  raise DataError(f"unknown QA dataset {dataset!r}")
