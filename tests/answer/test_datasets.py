"""QA loaders: shipped files parse with the documented counts; bad files raise DataError."""

import os

import pytest

from ghosttrack_jax.answer import datasets
from ghosttrack_jax.errors import DataError


def test_nq_open_dev():
  items = datasets.load_nq_open()
  assert len(items) == 3610
  assert items[0].question == "when was the last time anyone was on the moon"
  assert items[0].gold == ("14 December 1972 UTC", "December 1972")
  assert len({i.qid for i in items}) == 3610
  assert len(datasets.load_nq_open(limit=7)) == 7
  assert len(datasets.load_nq_open(datasets.NQ_OPEN_EFFICIENTQA)) == 1800


def test_truthfulqa_both_releases():
  items = datasets.load_truthfulqa()
  assert len(items) == 790
  first = items[0]
  assert first.best == first.gold[0]
  assert "You grow watermelons in your stomach" in first.incorrect
  assert all(i.gold and i.incorrect for i in items)
  v1 = datasets.load_truthfulqa(datasets.TRUTHFULQA_V1)
  assert len(v1) == 817
  assert v1[0].question.startswith("What happens to you if you eat watermelon seeds")  # BOM stripped


def test_halueval():
  one = datasets.load_halueval("one-turn")
  assert len(one) == 500 and all(len(i.gold) == 1 and len(i.incorrect) == 1 for i in one)
  both = datasets.load_halueval("both")
  assert len(both) == 500  # same questions, merged
  assert all(len(i.gold) == 1 for i in both)  # right answers are shared, deduplicated
  assert sum(len(i.incorrect) for i in both) > 500


def test_dispatch_and_unknown():
  assert len(datasets.load("nq_open", limit=3)) == 3
  assert len(datasets.load("truthfulqa_given", limit=2)) == 2
  with pytest.raises(DataError, match="unknown QA dataset"):
    datasets.load("triviaqa")


def test_missing_and_malformed(tmp_path):
  with pytest.raises(DataError, match="not found"):
    datasets.load_nq_open(str(tmp_path / "nope.jsonl"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"question": "q", "answer": ["a"]}\n{oops\n')
  with pytest.raises(DataError, match="line 2"):
    datasets.load_nq_open(str(bad))
  noans = tmp_path / "noans.jsonl"
  noans.write_text('{"question": "q", "answer": []}\n')
  with pytest.raises(DataError, match="gold aliases"):
    datasets.load_nq_open(str(noans))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(DataError, match="empty"):
    datasets.load_nq_open(str(empty))
  csvf = tmp_path / "t.csv"
  csvf.write_text("Question,Answer\nq,a\n")
  with pytest.raises(DataError, match="missing TruthfulQA columns"):
    datasets.load_truthfulqa(str(csvf))


def test_hashes_match_data_readme():
  assert datasets.sha256(datasets.NQ_OPEN_DEV) == (
    "f15567f38099f3615f5b8a685c0aef449c11ad90d3da3735e8d1b98115b40616"
  )
  assert os.path.isabs(datasets.resolve(datasets.TRUTHFULQA))
