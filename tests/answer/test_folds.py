"""Folds: no question group in two folds, stratification, determinism; answers stage on a fake model."""

import json
import os

import numpy as np
import pytest
import transformers

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import datasets, prompts
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import folds as folds_lib
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.errors import DataError

TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(datasets.__file__)), "assets", "gpt2_tokenizer")


def test_groups_never_cross_folds_and_strata_balanced():
  rng = np.random.default_rng(0)
  n_groups = 300
  sizes = rng.integers(1, 5, n_groups)
  groups = np.repeat(np.arange(n_groups), sizes)
  labels = (rng.random(len(groups)) < 0.3).astype(int)
  folds, info = folds_lib.assign_folds(labels, groups, n_folds=5, n_repeats=2, seed=3)
  assert info["stratified"] and folds.shape == (2, len(groups))
  for r in range(2):
    for g in range(n_groups):
      assert len(set(folds[r, groups == g])) == 1
    rates = [labels[folds[r] == f].mean() for f in range(5)]
    assert max(rates) - min(rates) < 0.03, rates
    assert sorted(set(folds[r])) == list(range(5))
  assert not np.array_equal(folds[0], folds[1])  # repeats differ
  again, _ = folds_lib.assign_folds(labels, groups, n_folds=5, n_repeats=2, seed=3)
  np.testing.assert_array_equal(folds, again)  # fixed seed


def test_singleton_groups_stratify_exactly():
  rng = np.random.default_rng(1)
  labels = (rng.random(400) < 0.2).astype(int)
  folds, _ = folds_lib.assign_folds(labels, np.arange(400), n_folds=5, seed=0)
  pos = np.bincount(folds[0], weights=labels, minlength=5)
  assert pos.max() - pos.min() <= 1 and set(np.bincount(folds[0])) == {80}


def test_group_ids_from_normalised_question():
  g = folds_lib.group_ids(["Who wrote X?", "who wrote x", "Where is Y?"])
  assert g[0] == g[1] != g[2]


def test_single_class_falls_back_to_grouped():
  folds, info = folds_lib.assign_folds(np.ones(20, int), np.arange(20), n_folds=4)
  assert not info["stratified"] and set(folds[0]) == {0, 1, 2, 3}
  with pytest.raises(DataError):
    folds_lib.assign_folds(np.ones(3, int), np.arange(3), n_folds=4)


class _Gen:
  def __init__(self, ids):
    self.token_ids = ids


class FakeModel:
  """GPT-2 tokenizer + canned continuations keyed by the question."""

  def __init__(self, replies):
    self.tokenizer = transformers.GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)
    self.eos_id = self.pad_id = self.tokenizer.eos_token_id
    self.replies = replies
    self.calls = 0

  def encode(self, text):
    return self.tokenizer(text)["input_ids"]

  def generate(self, prompts, max_new_tokens, batch_size, n_samples=0, **_):
    assert not n_samples, "canned replies have no samples: the tests set config.qa.n_samples = 0"
    self.calls += 1
    out = []
    for p in prompts:
      q = p.rsplit("Q: ", 1)[1].split("\n")[0]
      out.append(_Gen(self.tokenizer(self.replies.get(q, " no idea"))["input_ids"][:max_new_tokens]))
    return out


def test_postprocess_cuts():
  tok = transformers.GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)
  ids = tok(" Paris\nQ: next")["input_ids"]
  moved, ans, flags = prompts.postprocess(ids, tok, [tok.eos_token_id])
  assert tok.decode(ans) == " Paris" and "newline" in flags and not moved
  ids = tok(" Dr. Who was born in 1963. He")["input_ids"]
  _, ans, flags = prompts.postprocess(ids, tok, [tok.eos_token_id])
  assert tok.decode(ans) == " Dr. Who was born in 1963." and "sentence_cut" in flags
  ids = tok("\n\n")["input_ids"] + tok(" 1972")["input_ids"] + [tok.eos_token_id] + tok(" x")["input_ids"]
  moved, ans, flags = prompts.postprocess(ids, tok, [tok.eos_token_id])
  assert tok.decode(moved).strip() == "" and tok.decode(ans) == " 1972" and "stop_token" in flags
  _, ans, flags = prompts.postprocess(tok("\nfoo")["input_ids"], tok, [tok.eos_token_id])
  assert "empty" in flags or tok.decode(ans) == "foo"


def test_answer_stage_end_to_end(tmp_path):
  c = config_lib.base_config()
  c.model.name = "fake"
  c.model.source = "random"
  c.qa.n_questions = 40
  c.qa.batch_size = 16
  c.qa.n_samples, c.qa.p_true = 0, False  # canned replies: no samples, no model to ask
  c.qa.prompt_style = "fewshot"
  c.evaluate.n_folds = 3
  items = datasets.load_nq_open(limit=40)
  replies = {}
  for i, it in enumerate(items):
    q = it.question[:1].upper() + it.question[1:]
    q = q if q.endswith("?") else q + "?"
    replies[q] = (" " + it.gold[0] + ".\n") if i % 3 == 0 else (" Wrong answer" if i % 7 else "\n")
  model = FakeModel(replies)
  answer_stage.run(c, str(tmp_path), model=model)
  assert model.calls == 3
  ex = examples_lib.load_examples(c, str(tmp_path))
  folds = examples_lib.load_folds(c, str(tmp_path))
  man = examples_lib.load_manifest(c, str(tmp_path))
  assert man["n_excluded"] > 0 and man["excluded_reasons"] == {"empty answer": man["n_excluded"]}
  assert len(ex) + man["n_excluded"] == 40
  assert sum(e["label"] == 0 for e in ex) == 14  # every third question answered with its gold alias
  e0 = ex[0]
  assert set(e0) >= {
    "id",
    "group_id",
    "question",
    "prompt_ids",
    "answer_ids",
    "answer_text",
    "gold",
    "label",
    "label_method",
    "fold",
    "folds",
    "labels_all",
    "mode",
    "flags",
  }
  tok = model.tokenizer
  assert tok.decode(e0["prompt_ids"]).endswith("A:")
  assert tok.decode(e0["prompt_ids"]).startswith(prompts.FEWSHOT_INSTRUCTION)
  assert list(folds["example_id"]) == [e["id"] for e in ex]
  assert [e["fold"] for e in ex] == list(folds["folds"][0])
  # resume: generations are reused, nothing is generated again
  os.remove(os.path.join(tmp_path, "cache", "fake", "answers", "nq_open", "DONE"))
  os.remove(os.path.join(tmp_path, "cache", "fake", "answers", "nq_open", "generations", "batch_00002.json"))
  model2 = FakeModel(replies)
  answer_stage.run(c, str(tmp_path), model=model2)
  assert model2.calls == 1
  assert json.dumps(examples_lib.load_examples(c, str(tmp_path))) == json.dumps(ex)


def test_given_text_mode(tmp_path):
  c = config_lib.base_config()
  c.model.name = "fake"
  c.model.source = "random"
  c.qa.dataset = "halueval_given"
  c.qa.n_questions = 12
  c.qa.prompt_style = "fewshot"
  c.evaluate.n_folds = 3
  answer_stage.run(c, str(tmp_path), model=FakeModel({}))
  ex = examples_lib.load_examples(c, str(tmp_path))
  assert len(ex) == 24 and sum(e["label"] for e in ex) == 12
  assert all(e["mode"] == "given_text" and e["label_method"] == "given_reference" for e in ex)
  for g in {e["group_id"] for e in ex}:
    assert len({e["fold"] for e in ex if e["group_id"] == g}) == 1
  tok = FakeModel({}).tokenizer
  e = ex[0]
  assert tok.decode(e["answer_ids"]) == " " + e["answer_text"]


def test_truthfulqa_own_answer_labels(tmp_path):
  c = config_lib.base_config()
  c.model.name, c.model.source = "fake", "random"
  c.qa.dataset, c.qa.n_questions, c.qa.prompt_style = "truthfulqa", 12, "fewshot"
  c.qa.n_samples, c.qa.p_true = 0, False  # canned replies: no samples, no model to ask
  c.evaluate.n_folds = 2
  items = datasets.load_truthfulqa(limit=12)
  replies = {}
  for i, it in enumerate(items):
    q = it.question[:1].upper() + it.question[1:]
    replies[q if q.endswith("?") else q + "?"] = " " + (it.best if i % 2 == 0 else it.incorrect[0]) + "\n"
  answer_stage.run(c, str(tmp_path), model=FakeModel(replies))
  ex = examples_lib.load_examples(c, str(tmp_path), "truthfulqa")
  assert [e["label"] for e in ex] == [i % 2 for i in range(12)]
  assert ex[0]["label_method"] == "truthfulqa_rougeL_diff"
  assert set(ex[0]["labels_all"]) >= {"truthfulqa_rougeL_diff", "truthfulqa_f1_diff", "containment"}
