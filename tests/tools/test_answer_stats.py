"""scripts/answer_stats.py on a small answers folder with known counts."""

import importlib.util
import json
import os

import pytest

from ghosttrack_jax.runtime import atomic_io

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "answer_stats.py")


def _module():
  spec = importlib.util.spec_from_file_location("answer_stats", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write(folder, name, rows):
  with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_counts_lengths_cuts_and_rule_agreement(tmp_path):
  folder = str(tmp_path / "answers")
  os.makedirs(folder)
  examples = [
    {"answer_text": "Paris.", "gold": ["Paris"], "flags": []},  # exact and contained
    {"answer_text": "It is Paris, France.", "gold": ["Paris"], "flags": []},  # contained only
    {"answer_text": "Berlin.", "gold": ["Paris"], "flags": []},  # neither
  ]
  excluded = [
    # cut by the budget before the name: neither rule calls it right
    {
      "answer_text": "The capital city of the country that",
      "gold": ["Paris"],
      "flags": ["max_new_tokens"],
      "reason": "cut",
    },
  ]
  _write(folder, "examples.jsonl", examples)
  _write(folder, "excluded.jsonl", excluded)
  stats = _module()
  with pytest.raises(SystemExit, match="no DONE marker"):
    stats.summarise(folder)
  atomic_io.write_done(folder, {})
  out = stats.summarise(folder)
  assert out["answers"] == 4 and out["labelled_examples"] == 3 and out["excluded"] == {"cut": 1}
  assert out["answer_words_median"] == 2.5  # 1, 4, 1, 7 words
  assert out["cut_by_budget"] == 1 and out["cut_share"] == 0.25
  assert out["exact_match_correct"] == 1 and out["containment_correct"] == 2
  assert out["exact_vs_containment_agreement"] == 0.75
  assert out["containment_correct_among_cut"] == 0
