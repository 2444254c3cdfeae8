"""Loaders for the question-answer sets shipped in `data/qa/` (docs/method.md §6.5).

Each loader returns a list of `QAItem`: the question, its gold (correct) answers and, where the set has
them, incorrect reference answers. Files are found relative to the working directory first and then
relative to the repository root, so `data/qa/...` works from anywhere inside the checkout. Missing,
empty or malformed files raise `DataError` naming the file, the line and what to do.

Sets:
  * wikidata: BIG-bench qa_wikidata (20,321 stems such as "The country of Novosibirsk is" + one gold
    object). The stems of the form "The <relation> of <subject> is" are kept (81%); per relation a few
    are set aside as the prompt's exemplars and the questions are a seeded sample capped per relation.
    Gold strings get the reviewed aliases of `aliases.py`.
  * squad: SQuAD v1.1 dev (10,570 questions with their paragraph and the annotators' answers); the
    exemplars come from articles that no question is drawn from.
  * jsonl: the user's own file, one JSON object per line with `question`, `answers` (a list of
    strings) and optionally `context` and `id`. A few of its items with short answers are set aside
    (seeded) as the prompt's solved exemplars, so the model sees what a short answer looks like; the
    questions are the rest, in file order.
  * NQ-open dev (3,610 questions, gold alias lists) and the EfficientQA dev file (1,800; the
    few-shot exemplar pool).
  * TruthfulQA (790-row January 2025 CSV, or the 817-row v1 release with a UTF-8 BOM): correct answers
    = "Best Answer" plus "Correct Answers"; incorrect = "Best Incorrect Answer" (790 version only)
    plus "Incorrect Answers"; `;`-separated lists.
  * HaluEval QA (one-turn, multi-turn, or both): right vs hallucinated answer; the `knowledge` field is
    kept in `meta` but never used by default.
"""

import collections
import csv
import dataclasses
import io
import json
import os
import re

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import aliases
from ghosttrack_jax.errors import DataError
from ghosttrack_jax.runtime import atomic_io, paths

REPO_ROOT = paths.REPO_ROOT

NQ_OPEN_DEV = "data/qa/NQ-open.dev.jsonl"
NQ_OPEN_EFFICIENTQA = "data/qa/NQ-open.efficientqa.dev.1.1.jsonl"
TRUTHFULQA = "data/qa/TruthfulQA.csv"
TRUTHFULQA_V1 = "data/qa/TruthfulQA_v1_817.csv"
WIKIDATA = "data/qa/bigbench_qa_wikidata.jsonl"
SQUAD = "data/qa/squad_v1.1_dev.jsonl"
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
    meta: other fields (TruthfulQA type/category/source, HaluEval knowledge and subset; wikidata
      relation, subject and stem; squad title).
    context: the passage given before the question (squad, jsonl lines with `context`), else None.
  """

  qid: str
  question: str
  gold: tuple[str, ...]
  incorrect: tuple[str, ...] = ()
  best: str | None = None
  meta: dict = dataclasses.field(default_factory=dict, compare=False)
  context: str | None = None

  @property
  def relation(self) -> str:
    """The wikidata relation ("country", "native language"); "" for the other sets."""
    return self.meta.get("relation", "")


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
  # A shipped file is fixed by downloading it again; a user's file by saving it again.
  shipped = os.path.abspath(full).startswith(os.path.join(REPO_ROOT, "data") + os.sep)
  fix = "re-download it from the source in data/README.md" if shipped else "save it again as UTF-8 text"
  with open(full, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8-sig")  # -sig strips the BOM of the 817-row TruthfulQA
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise DataError(f"{full} line {line}: not UTF-8 text (byte {data[e.start]:#04x}); {fix}") from None
  if not text.strip():
    raise DataError(
      f"{full} is empty; " + (fix if shipped else "put the questions in it (README.md, 'Question sets')")
    )
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


# ---- wikidata ------------------------------------------------------------------------------------

_STEM = re.compile(r"^The (.+) is$")
# A relation longer than its first words must head at least this many stems and continue in lower case:
# "The country of citizenship of X is" is the relation "country of citizenship" (many stems start so),
# not "country" with the subject "citizenship of X"; "The capital of Kingdom of Denmark is" stays
# "capital" because "Kingdom" starts a name.
_MIN_RELATION_STEMS = 10


def _split_stems(rows, path):
  """(row number, relation, subject, stem, gold) for every stem of the form "The <relation> of <subject> is"."""
  parsed = []
  for n, row in enumerate(rows, start=1):
    stem, gold = row.get("context"), row.get("continuation")
    if not isinstance(stem, str) or not isinstance(gold, str) or not gold.strip():
      raise DataError(f"{path} line {n}: expected 'context' (a stem) and 'continuation' (the gold object)")
    m = _STEM.match(" ".join(stem.split()))
    if m and " of " in m.group(1):
      body = m.group(1)
      cuts = [i for i in range(len(body)) if body.startswith(" of ", i)]
      parsed.append((n - 1, body, cuts, " ".join(stem.split()), " ".join(gold.split())))
  heads = collections.Counter(body[:i] for _, body, cuts, _, _ in parsed for i in cuts)
  out = []
  for row, body, cuts, stem, gold in parsed:
    frequent = [
      i
      for i in cuts
      if heads[body[:i]] >= _MIN_RELATION_STEMS and all(w[:1].islower() for w in body[:i].split(" of ")[1:])
    ]
    i = max(frequent) if frequent else min(cuts)
    out.append((row, body[:i], body[i + 4 :], stem, gold))
  return out


def wikidata_pools(path: str, n_exemplars: int, seed: int) -> tuple[dict, dict]:
  """(exemplars, candidates) per relation: a seeded shuffle of each relation's stems, the first
  `n_exemplars` (stem, gold) pairs as exemplars, the rest as question candidates. Relations with no
  candidate left are dropped. Deterministic in (file, n_exemplars, seed)."""
  by_rel = collections.defaultdict(list)
  for rec in _split_stems(_json_lines(path), path):
    by_rel[rec[1]].append(rec)
  exemplars, candidates = {}, {}
  for k, rel in enumerate(sorted(by_rel)):
    recs = by_rel[rel]
    order = np.random.default_rng([seed, k]).permutation(len(recs))
    recs = [recs[i] for i in order]
    if len(recs) <= n_exemplars:
      continue
    exemplars[rel] = [(r[3], r[4]) for r in recs[:n_exemplars]]
    candidates[rel] = recs[n_exemplars:]
  if not candidates:
    raise DataError(f"{path}: no stems of the form 'The <relation> of <subject> is'")
  return exemplars, candidates


def load_wikidata(path: str, limit: int = 0, cap: int = 20, n_exemplars: int = 3, seed: int = 0):
  """The wikidata questions: at most `cap` per relation (0 = all), then a seeded sample of `limit`
  (0 = all of them). Each item keeps its relation, subject and stem in `meta`."""
  _, candidates = wikidata_pools(path, n_exemplars, seed)
  pool = [r for rel in sorted(candidates) for r in (candidates[rel][:cap] if cap else candidates[rel])]
  order = np.random.default_rng(seed).permutation(len(pool))
  if limit:
    order = order[:limit]
  items = []
  for i in order:
    row, rel, subject, stem, gold = pool[i]
    meta = {"relation": rel, "subject": subject, "stem": stem}
    items.append(
      QAItem(f"wikidata-{row:05d}", f"What is the {rel} of {subject}?", aliases.expand(gold), meta=meta)
    )
  return items


# ---- squad and the user's own file ------------------------------------------------------------------


def _squad_rows(path: str) -> list[dict]:
  rows = _json_lines(path)
  for n, r in enumerate(rows, start=1):
    for key in ("question", "context", "title"):
      if not isinstance(r.get(key), str) or not r[key].strip():
        raise DataError(
          f"{path} line {n}: missing or empty {key!r} (a SQuAD line has id, title, question, answers, context)"
        )
    if not isinstance(r.get("answers"), list) or not _clean_list(r["answers"]):
      raise DataError(f"{path} line {n}: 'answers' must be a non-empty list of strings")
  return rows


def squad_pools(path: str, n_exemplars: int, seed: int) -> tuple[list, list]:
  """(exemplars, candidates): the articles in a seeded order; exemplars are the questions of the first
  article with the shortest paragraphs and a short (<= 3 words) first answer, as (context, question,
  answer); candidates are the rows of every other article, so no exemplar shares a passage or topic
  with a question."""
  rows = _squad_rows(path)
  titles = sorted({r["title"] for r in rows})
  first = titles[int(np.random.default_rng(seed).integers(len(titles)))]
  pool = sorted(
    (r for r in rows if r["title"] == first and len(_clean_list(r["answers"])[0].split()) <= 3),
    key=lambda r: (len(r["context"]), r["question"]),
  )
  exemplars, used = [], set()
  for r in pool:  # one exemplar per paragraph
    if r["context"] not in used and len(exemplars) < n_exemplars:
      used.add(r["context"])
      exemplars.append(
        (" ".join(r["context"].split()), " ".join(r["question"].split()), _clean_list(r["answers"])[0])
      )
  return exemplars, [r for r in rows if r["title"] != first]


def load_squad(path: str, limit: int = 0, n_exemplars: int = 3, seed: int = 0) -> list[QAItem]:
  """A seeded sample of `limit` SQuAD questions (0 = all) from the articles not used for exemplars."""
  _, rows = squad_pools(path, n_exemplars, seed)
  order = np.random.default_rng(seed).permutation(len(rows))
  items = []
  for i in order[:limit] if limit else order:
    r = rows[i]
    qid = f"squad-{r.get('id') or i}"
    meta = {"title": r["title"]}
    items.append(
      QAItem(
        qid,
        " ".join(r["question"].split()),
        _clean_list(r["answers"]),
        meta=meta,
        context=" ".join(r["context"].split()),
      )
    )
  return items


def read_jsonl(path: str) -> list[QAItem]:
  """Every item of the user's file: one JSON object per line with `question` (a string), `answers` (a
  non-empty list of strings: the gold aliases) and optionally `context` (a passage shown before the
  question) and `id` (unique; default the line number)."""
  if not path:
    raise DataError("config.qa.dataset='jsonl' needs config.qa.path: a file with one JSON object per line")
  items, seen = [], set()
  for n, row in enumerate(_json_lines(path), start=1):
    q, ans, ctx = row.get("question"), row.get("answers"), row.get("context")
    if not isinstance(q, str) or not q.strip():
      raise DataError(f"{path} line {n}: missing or empty 'question' (each line needs question and answers)")
    if not isinstance(ans, list) or not all(isinstance(a, str) for a in ans) or not _clean_list(ans):
      raise DataError(f"{path} line {n}: 'answers' must be a non-empty list of strings (the gold aliases)")
    if ctx is not None and not isinstance(ctx, str):
      raise DataError(f"{path} line {n}: 'context' must be a string when given")
    qid = f"jsonl-{row['id']}" if row.get("id") is not None else f"jsonl-{n:06d}"
    if qid in seen:
      raise DataError(f"{path} line {n}: id {row['id']!r} repeats an earlier line; ids must be unique")
    seen.add(qid)
    items.append(
      QAItem(
        qid,
        " ".join(q.split()),
        _clean_list(ans),
        meta={"line": n},  # named by the checks before any stage (answer.checks)
        context=" ".join(ctx.split()) if ctx else None,
      )
    )
  return items


def jsonl_pools(path: str, n_exemplars: int, seed: int) -> tuple[list[QAItem], list[QAItem]]:
  """(exemplars, candidates) of the user's file: in a seeded order, the first `n_exemplars` items whose
  first answer has at most 3 words become the prompt's exemplars; the other items, in file order, are the
  questions (an exemplar is never asked)."""
  items = read_jsonl(path)
  chosen = []
  for i in np.random.default_rng(seed).permutation(len(items)):
    if len(chosen) == n_exemplars:
      break
    if len(items[i].gold[0].split()) <= 3:
      chosen.append(int(i))
  if len(chosen) < n_exemplars:
    raise DataError(
      f"{path}: {len(chosen)} items have a short (<= 3 words) first answer; the prompt needs "
      f"config.qa.n_exemplars={n_exemplars} of them as solved exemplars (lower n_exemplars or add items)"
    )
  taken = set(chosen)
  return [items[i] for i in chosen], [it for i, it in enumerate(items) if i not in taken]


def load_jsonl(path: str, limit: int = 0, n_exemplars: int = 0, seed: int = 0) -> list[QAItem]:
  """The user's questions (`read_jsonl`) minus the `n_exemplars` set aside for the prompt."""
  _, items = jsonl_pools(path, n_exemplars, seed)
  if len(items) < 1:
    raise DataError(f"{path}: no questions are left after setting aside {n_exemplars} exemplars")
  return items[:limit] if limit else items


def load(dataset: str, qa_cfg=None, limit: int = 0) -> list[QAItem]:
  """Loads the set behind `config.qa.dataset` (given-text sets load the same questions)."""
  get = (lambda k, d: qa_cfg.get(k, d)) if qa_cfg is not None else (lambda k, d: d)
  if dataset == "wikidata":
    return load_wikidata(
      get("wikidata_file", WIKIDATA),
      limit,
      get("per_relation_cap", 20),
      get("n_exemplars", 3),
      get("sample_seed", 0),
    )
  if dataset == "squad":
    return load_squad(get("squad_file", SQUAD), limit, get("n_exemplars", 3), get("sample_seed", 0))
  if dataset == "jsonl":
    return load_jsonl(get("path", ""), limit, get("n_exemplars", 3), get("sample_seed", 0))
  if dataset == "nq_open":
    return load_nq_open(get("nq_open_file", NQ_OPEN_DEV), limit)
  if dataset in ("truthfulqa", "truthfulqa_given"):
    return load_truthfulqa(get("truthfulqa_file", TRUTHFULQA), limit)
  if dataset == "halueval_given":
    return load_halueval(get("halueval_subset", "one-turn"), limit)
  raise DataError(f"unknown QA dataset {dataset!r}: use one of {config_lib.QA_DATASETS}")


def data_files(dataset: str, qa_cfg=None) -> list[str]:
  """The files a dataset reads (for manifests/hashes)."""
  get = (lambda k, d: qa_cfg.get(k, d)) if qa_cfg is not None else (lambda k, d: d)
  if dataset == "wikidata":
    return [get("wikidata_file", WIKIDATA)]
  if dataset == "squad":
    return [get("squad_file", SQUAD)]
  if dataset == "jsonl":
    return [get("path", "")]
  if dataset == "nq_open":
    return [get("nq_open_file", NQ_OPEN_DEV), get("fewshot_file", NQ_OPEN_EFFICIENTQA)]
  if dataset in ("truthfulqa", "truthfulqa_given"):
    return [get("truthfulqa_file", TRUTHFULQA)]
  if dataset == "halueval_given":
    s = get("halueval_subset", "one-turn")
    return [HALUEVAL[x] for x in (("one-turn", "multi-turn") if s == "both" else (s,))]
  raise DataError(f"unknown QA dataset {dataset!r}")
