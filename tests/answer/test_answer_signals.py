"""The answer stage's extra signals on tiny random models with the real tokenizers: samples that a resumed
or re-batched run draws again, P(True) read at the right token ids, subject familiarity, a user's jsonl
file with its own exemplars, and answers cut by the token budget kept out of both classes."""

import json
import os

import numpy as np
import pytest
import tiny_pipeline

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.answer import datasets, self_eval
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.errors import StoreMismatchError
from ghosttrack_jax.runtime import paths


def _model(family):
  c = config_lib.base_config().model
  c.name, c.family, c.source = f"tiny_{family}", family, "random"
  c.random.n_layer, c.random.d_model, c.random.n_head, c.random.n_positions = 2, 64, 4, 512
  return lm.load_model(c)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
  return _model(request.param)


def test_p_true_reads_the_option_tokens_of_the_models_tokenizer(model):
  shots = self_eval.ptrue_shots(
    [("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "Shakespeare")]
  )
  assert [ok for _, _, ok in shots] == [True, False] and shots[1][1] == "Paris"
  prompt = self_eval.ptrue_prompt("What is the country of Lyon?", "France", shots)
  assert prompt.endswith(
    "Proposed answer: France\nIs the proposed answer:\n A) True\n B) False\nThe proposed answer is:"
  )
  ids = self_eval.option_ids(model, prompt)
  assert [model.tokenizer.decode([i]) for i in ids] == [" A", " B"]
  got = self_eval.p_true(model, [prompt, prompt + " Really"], batch_size=2)
  enc = np.asarray([model.encode(prompt)], np.int32)
  logp = np.asarray(model.logits(enc)[0, -1], np.float64)
  want = np.exp(logp[ids[0]]) / (np.exp(logp[ids[0]]) + np.exp(logp[ids[1]]))
  assert got[0] == pytest.approx(want, abs=1e-5) and 0 < got[1] < 1


def test_subject_familiarity_is_the_subjects_log_probability(model):
  fam = self_eval.subject_familiarity(model, ["Grenoble", "Charles Darwin"], batch_size=4)
  ctx = model.encode(self_eval.FAMILIARITY_CONTEXT)
  cont = model.tokenizer(" Charles Darwin", add_special_tokens=False)["input_ids"]
  ids = np.asarray([ctx + cont], np.int32)
  logp = np.asarray(model.logits(ids)[0], np.float64)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))
  assert fam[1, 0] == pytest.approx(want, abs=1e-3)
  assert fam[1, 2] == len(cont) and fam[1, 1] == pytest.approx(fam[1, 0] / len(cont))


def _wikidata_config(tmp_path, **fields):
  qa_file = str(tmp_path / "wiki.jsonl")
  if not os.path.exists(qa_file):
    tiny_pipeline._default_qa_file(qa_file)
  c = tiny_pipeline.load_config("default")
  c.qa.wikidata_file, c.qa.exclude_non_answers, c.qa.exclude_cut_answers = qa_file, False, False
  c.qa.n_questions, c.qa.n_samples, c.qa.batch_size = 12, 3, 4
  for k, v in fields.items():
    tiny_pipeline.set_fields(c, {k: v})
  return c


def test_resumed_and_rebatched_runs_draw_the_same_samples(tmp_path):
  model = _model("llama")  # the default's family and tokenizer
  c = _wikidata_config(tmp_path)
  first = str(tmp_path / "a")
  answer_stage.run(c, first, model=model)
  ex = examples_lib.load_examples(c, first)
  assert all(len(e["samples"]) == 3 for e in ex)
  samples = {e["id"]: [s["text"] for s in e["samples"]] for e in ex}
  assert len({t for v in samples.values() for t in v}) > 3  # a random model's samples differ
  ids, scores = examples_lib.load_question_scores(c, first)
  assert set(scores) >= {"semantic_entropy", "eigenscore", "p_true", "subject_logprob"}
  # a killed run: the table and one generation batch are gone, the other batches are reused
  out = paths.for_config(c, first).answers("wikidata")
  for f in ("DONE", "examples.jsonl"):
    os.remove(os.path.join(out, f))
  for f in ("batch_00001.json", "batch_00001.npz"):
    os.remove(os.path.join(out, "generations", f))
  answer_stage.run(c, first, model=model)
  again = examples_lib.load_examples(c, first)
  assert {e["id"]: [s["text"] for s in e["samples"]] for e in again} == samples
  np.testing.assert_allclose(
    examples_lib.load_question_scores(c, first)[1]["eigenscore"], scores["eigenscore"], rtol=1e-5
  )
  # another batch size puts every question in another batch: the same samples per question
  other = _wikidata_config(tmp_path, **{"qa.batch_size": 5})
  answer_stage.run(other, str(tmp_path / "b"), model=model)
  rebatched = examples_lib.load_examples(other, str(tmp_path / "b"))
  assert {e["id"]: [s["text"] for s in e["samples"]] for e in rebatched} == samples


def test_jsonl_exemplars_come_from_the_file_and_cut_answers_are_excluded(tmp_path):
  qa = str(tmp_path / "mine.jsonl")
  rows = [
    {"question": f"Who founded company number {i}?", "answers": [f"Founder {i}"], "id": i} for i in range(12)
  ]
  rows[5]["answers"] = ["a name of more than three words"]
  with open(qa, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  shots, questions = datasets.jsonl_pools(qa, 3, seed=0)
  assert len(shots) == 3 and len(questions) == 9
  assert not {s.qid for s in shots} & {q.qid for q in questions}
  assert all(len(s.gold[0].split()) <= 3 for s in shots)
  order = [int(q.qid.split("-")[1]) for q in questions]
  assert order == sorted(order)  # file order
  model = _model("llama")
  c = tiny_pipeline.load_config("default")
  c.qa.dataset, c.qa.path, c.qa.prompt_style, c.qa.n_samples, c.qa.batch_size = "jsonl", qa, "chat", 0, 4
  items = datasets.load("jsonl", c.qa)
  out = str(tmp_path / "answers")
  os.makedirs(out)
  examples, excluded, fmt, _ = answer_stage.build_examples(c, model, items, out)
  prompt = fmt.render(items[0])
  for s in shots:  # the exemplars are solved turns of the chat
    assert f"{s.question}<|im_end|>\n<|im_start|>assistant\n{s.gold[0]}<|im_end|>" in prompt
  # a random model never ends its answer within 6 tokens: every answer is cut, none is labelled
  assert not examples and {e["reason"] for e in excluded} == {"cut by the token budget"}
  assert all("max_new_tokens" in e["flags"] for e in excluded)


def test_a_run_name_keeps_two_samples_of_one_set_apart(tmp_path):
  """The study's larger wikidata sample runs in the default's workdir (same store and SAEs) when its
  outputs have a name of their own; without one, the finished answers of the other sample are refused."""
  model = _model("llama")
  workdir = str(tmp_path / "run")
  small = _wikidata_config(tmp_path, **{"qa.n_questions": 6, "qa.n_samples": 0})
  answer_stage.run(small, workdir, model=model)
  large = _wikidata_config(tmp_path, **{"qa.n_questions": 10, "qa.n_samples": 0})
  with pytest.raises(StoreMismatchError, match="run_name"):
    answer_stage.run(large, workdir, model=model)
  large.qa.run_name = "wikidata_study"
  answer_stage.run(large, workdir, model=model)
  p = paths.for_config(large, workdir)
  assert os.path.isdir(p.answers("wikidata")) and os.path.isdir(p.answers("wikidata_study"))
  assert len(examples_lib.load_examples(small, workdir)) == 6
  assert len(examples_lib.load_examples(large, workdir)) == 10
