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


def test_wikidata_sample_is_capped_per_relation_and_disjoint_from_the_exemplars():
  items = datasets.load_wikidata(datasets.WIKIDATA, cap=20, n_exemplars=3, seed=0)
  per_rel = {}
  for it in items:
    per_rel[it.relation] = per_rel.get(it.relation, 0) + 1
    assert it.question == f"What is the {it.relation} of {it.meta['subject']}?"
    assert it.meta["stem"] == f"The {it.relation} of {it.meta['subject']} is"
  assert max(per_rel.values()) == 20 and len(per_rel) > 50
  assert per_rel["country"] == 20  # a third of the pool, capped like the rest
  assert "country of citizenship" in per_rel  # a relation of several words, not "country" + subject
  exemplars, _ = datasets.wikidata_pools(datasets.WIKIDATA, 3, 0)
  shown = {s for shots in exemplars.values() for s, _ in shots}
  assert not shown & {it.meta["stem"] for it in items}
  assert all(len(v) == 3 for v in exemplars.values())
  again = datasets.load_wikidata(datasets.WIKIDATA, limit=50, cap=20, n_exemplars=3, seed=0)
  assert [i.qid for i in again] == [i.qid for i in datasets.load_wikidata(datasets.WIKIDATA, 50, 20, 3, 0)]
  assert len(again) == 50 and {i.qid for i in again} <= {i.qid for i in items}
  other = datasets.load_wikidata(datasets.WIKIDATA, limit=50, cap=20, n_exemplars=3, seed=1)
  assert {i.qid for i in other} != {i.qid for i in again}


def test_wikidata_golds_get_the_reviewed_aliases_only():
  items = {i.gold[0]: i for i in datasets.load_wikidata(datasets.WIKIDATA, cap=0)}
  assert items["Catholicism"].gold[:3] == ("Catholicism", "Catholic", "Roman Catholic")
  assert items["Persian"].gold == ("Persian", "Farsi")
  assert items["Japan"].gold == ("Japan",)  # no demonym for a country


def test_squad_exemplars_come_from_an_article_no_question_uses():
  exemplars, rows = datasets.squad_pools(datasets.SQUAD, 3, 0)
  assert len(exemplars) == 3 and all(len(a.split()) <= 3 and a in c for c, _, a in exemplars)
  items = datasets.load_squad(datasets.SQUAD, limit=40)
  assert len(items) == 40 and all(it.context and it.gold for it in items)
  assert not {c for c, _, _ in exemplars} & {it.context for it in items}
  assert len(rows) < 10570


def test_jsonl_questions_of_the_user(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_text(
    '{"question": "What is the capital of France?", "answers": ["Paris"]}\n\n'
    '{"question": "Who wrote it?", "answers": ["Jane Austen", "Austen"], "context": "Emma is a novel.", "id": 7}\n'
  )
  a, b = datasets.load_jsonl(str(path))
  assert (a.qid, a.gold, a.context) == ("jsonl-000001", ("Paris",), None)
  assert (b.qid, b.gold, b.context) == ("jsonl-7", ("Jane Austen", "Austen"), "Emma is a novel.")


@pytest.mark.parametrize(
  "text, message",
  [
    ("", "is empty"),
    ('{"answers": ["x"]}\n', "line 1: missing or empty 'question'"),
    ('{"question": "q?"}\n', "line 1: 'answers' must be a non-empty list of strings"),
    ('{"question": "q?", "answers": "Paris"}\n', "'answers' must be a non-empty list"),
    ('{"question": "q?", "answers": ["a"]}\n{"question": "r?", "answers": []}\n', "line 2: 'answers'"),
    ('{"question": "q?", "answers": ["a"], "context": 3}\n', "'context' must be a string"),
    (
      '{"question": "q?", "answers": ["a"], "id": 1}\n{"question": "r?", "answers": ["b"], "id": 1}\n',
      "unique",
    ),
    ('{"question": "q?", "answers": ["a"]\n', "line 1: not valid JSON"),
  ],
)
def test_bad_jsonl_files_name_the_line_and_the_fix(tmp_path, text, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(text)
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
    datasets.load_jsonl(str(path))


def test_a_missing_jsonl_file_is_named():
  with pytest.raises(DataError, match="not found"):
    datasets.load_jsonl("/nonexistent/questions.jsonl")
  with pytest.raises(DataError, match="needs config.qa.path"):
    datasets.load_jsonl("")


def test_a_user_file_that_is_not_utf8_is_named_by_line_and_not_sent_to_data_readme(tmp_path):
  path = tmp_path / "mine.jsonl"
  path.write_bytes(
    b'{"question": "q?", "answers": ["a"]}\n{"question": "r?", "answers": ["b"]}\n{"question": "caf\xe9?"}\n'
  )
  with pytest.raises(DataError) as e:
    datasets.load_jsonl(str(path))
  assert "mine.jsonl line 3: not UTF-8 text (byte 0xe9)" in str(e.value)
  assert "byte 2" not in str(e.value) and "data/README.md" not in str(e.value)
  path.write_text("")
  with pytest.raises(DataError, match="mine.jsonl is empty") as e:
    datasets.load_jsonl(str(path))
  assert "re-download" not in str(e.value)
