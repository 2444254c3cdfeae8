"""Writes a user-style question file (jsonl: question, answers, id) of short factual questions whose
answers are names, for trying the `jsonl` path and the transfer command on a set the default never asks.

  .venv/bin/python scripts/make_question_file.py runs/questions_wikidata_heldout.jsonl [--per-relation 30]

The questions come from BIG-bench qa_wikidata (data/qa/, Apache-2.0), written as plain questions ("What is
the capital of Bavaria?") with the gold and its reviewed aliases, taken from each relation's candidates
after the first 60 (the study config's cap), so no question of the default or the study is among them.
They carry no relation field: to the pipeline this is just a user's file (chat prompt with exemplar turns
from the file itself).
"""

import argparse
import json

from ghosttrack_jax.answer import aliases, datasets

STUDY_CAP = 60  # configs/smollm2_135m_study.py's qa.per_relation_cap: the questions it may ask


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("out", help="the jsonl file to write")
  ap.add_argument("--per-relation", type=int, default=30, help="questions per relation (default 30)")
  args = ap.parse_args()
  _, candidates = datasets.wikidata_pools(datasets.WIKIDATA, n_exemplars=3, seed=0)
  rows = []
  for rel in sorted(candidates):
    for row, r, subject, _, gold in candidates[rel][STUDY_CAP : STUDY_CAP + args.per_relation]:
      rows.append(
        {"question": f"What is the {r} of {subject}?", "answers": list(aliases.expand(gold)), "id": row}
      )
  with open(args.out, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  print(
    f"{len(rows)} questions from {len({r['question'].split(' of ')[0] for r in rows})} relations -> {args.out}"
  )


if __name__ == "__main__":
  main()
