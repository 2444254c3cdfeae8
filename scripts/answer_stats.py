"""What a question set's answers look like: length, cuts by the token budget, and how much the label
depends on the matching rule (exact match against containment of a gold answer).

  .venv/bin/python scripts/answer_stats.py runs/smollm2_135m/cache/smollm2_135m/answers/jsonl

Reads a finished answers folder (examples.jsonl and excluded.jsonl of the answer stage). Every greedy
answer counts, the excluded ones too (non-answers, answers the budget cut): an answer cut before the name
is the case this measures. Labels here use the answer stage's own matching functions on the answer text
and the item's gold answers, so cut answers get a label too (the pipeline gives them none).
"""

import argparse
import json
import os
import statistics

from ghosttrack_jax.answer import labelling
from ghosttrack_jax.runtime import atomic_io

BUDGET_FLAG = "max_new_tokens"  # the answer stage's flag for an answer the token budget ended


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def summarise(folder: str) -> dict:
  if not atomic_io.is_done(folder):
    raise SystemExit(f"{folder} has no DONE marker: run the answer stage first")
  examples = read_jsonl(os.path.join(folder, "examples.jsonl"))
  excluded = read_jsonl(os.path.join(folder, "excluded.jsonl"))
  rows = examples + excluded
  words = [len(r["answer_text"].split()) for r in rows]
  exact = [labelling.exact_match(r["answer_text"], r["gold"]) for r in rows]
  contained = [labelling.contains(r["answer_text"], r["gold"]) for r in rows]
  cut = [BUDGET_FLAG in r["flags"] for r in rows]
  n = len(rows)
  return {
    "answers": n,
    "labelled_examples": len(examples),
    "excluded": {k: sum(r["reason"] == k for r in excluded) for k in sorted({r["reason"] for r in excluded})},
    "answer_words_median": statistics.median(words),
    "answer_words_mean": round(statistics.fmean(words), 2),
    "cut_by_budget": sum(cut),
    "cut_share": round(sum(cut) / n, 3),
    "exact_match_correct": sum(exact),
    "containment_correct": sum(contained),
    "exact_vs_containment_agreement": round(sum(a == b for a, b in zip(exact, contained)) / n, 3),
    "containment_correct_among_cut": sum(c for c, k in zip(contained, cut) if k),
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("folders", nargs="+", help="answers folders (cache/<model>/answers/<question set>)")
  for folder in ap.parse_args().folders:
    print(folder)
    print(json.dumps(summarise(folder), indent=2))


if __name__ == "__main__":
  main()
