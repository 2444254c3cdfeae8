"""Scoring a new question: end to end on the tiny random GPT-2 (given-text), and the CLI, the scoring API and
explore.ask on a run of the offline default's code paths (configs/tiny.py:default)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_pipeline

from ghosttrack_jax import config_lib, lm  # noqa: F401
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect import detector, oof, score
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.report import stage as report_stage
from ghosttrack_jax.tools import explore
from ghosttrack_jax.track import feature_table
from ghosttrack_jax.track import stage as track_stage


class FakeSAEs:
  """Random ReLU SAEs, one per layer (enough to exercise tracking; not trained)."""

  def __init__(self, n_layers, d, m, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, (n_layers, d, m)) / np.sqrt(d)
    dec = jax.random.normal(k2, (n_layers, m, d))
    dec = dec / jnp.linalg.norm(dec, axis=-1, keepdims=True)
    self.arch, self.layers, self.input_scale = (
      "relu_test",
      list(range(n_layers)),
      np.ones(n_layers, np.float32),
    )
    self.params = {
      "W_enc": w,
      "b_enc": jnp.zeros((n_layers, m)),
      "W_dec": dec,
      "b_dec": jnp.zeros((n_layers, d)),
      "threshold": jnp.zeros((n_layers, m)),
    }

  def encode(self, x):
    return jax.nn.relu(jnp.einsum("lnd,ldm->lnm", x, self.params["W_enc"]) * 4.0)

  def decode(self, z):
    return jnp.einsum("lnm,lmd->lnd", z, self.params["W_dec"])


@pytest.mark.slow
def test_score_question_end_to_end(tmp_path):
  c = config_lib.base_config()
  c.model.name, c.model.source = "tiny_cli", "random"
  c.model.random.n_layer, c.model.random.d_model = 2, 32
  c.qa.dataset, c.qa.n_questions, c.qa.prompt_style = "halueval_given", 15, "fewshot"
  c.tracking.top_k, c.tracking.batch_size = 8, 16
  c.evaluate.n_folds, c.evaluate.inner_folds, c.evaluate.n_bootstrap = 3, 2, 50
  c.evaluate.classifiers, c.evaluate.ablations = ("logistic", "random_forest"), False
  wd = str(tmp_path)
  model = lm.load_model(c.model)
  saes = FakeSAEs(model.n_layers, model.d_model, 64)
  answer_stage.run(c, wd, model=model)
  track_stage.run(c, wd, model=model, saes=saes)
  detect_stage.run(c, wd)
  evaluate_stage.run(c, wd)
  report_stage.run(c, wd)
  out = score.score_question(
    c, wd, "Which magazine was started first?", "Arthur's Magazine", model=model, saes=saes
  )
  assert 0 <= out["probability"] <= 1 and out["decision"] in ("correct", "hallucinated")
  assert out["mode"] == "given_text" and out["answer"] == "Arthur's Magazine"
  assert len(out["metrics"]) == 26 and len(out["per_layer"]["entropy"]) == model.n_layers
  json.dumps(out)
  own = score.score_question(c, wd, "Which magazine was started first?", model=model, saes=saes)
  assert own["mode"] == "own_answer"
  # the same example scored through the stage and through score_question gets the same metrics
  ex = examples_lib.load_examples(c, wd)[0]
  q = score.score_question(c, wd, ex["question"], ex["answer_text"], model=model, saes=saes)
  with np.load(f"{wd}/results/tiny_cli/tracking/halueval_given/features.npz") as z:
    np.testing.assert_allclose(list(q["metrics"].values()), z["X__ghosttrack"][0], rtol=1e-4, atol=1e-5)


# ---- on a run of the offline default's code paths (configs/tiny.py:default) ---------------------------


def test_score_cli_on_a_run_of_the_default_settings(tiny_default_run):
  """The README's scoring command on a run of the default's settings (calibrated birth thresholds, stem
  prompt, own answers): it once failed there with "pass the calibrated birth_thresholds"."""
  _, workdir, _ = tiny_default_run
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.tools.score_cli",
    f"--config={tiny_pipeline.DEFAULT_CONFIG}",
    f"--workdir={workdir}",
    "--question=What is the capital of France?",
    "--notracks",
  ]
  env = {**os.environ, **tiny_pipeline.ENV}
  proc = subprocess.run(cmd, cwd=tiny_pipeline.REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out["mode"] == "own_answer" and 0 <= out["probability"] <= 1, out
  assert out["decision"] in ("correct", "hallucinated") and len(out["metrics"]) == 26
  assert "tracks" not in out and len(out["per_layer"]["entropy"]) == 2


def test_scoring_api_and_explore_ask_agree_with_the_pipeline_on_default_settings(tiny_default_run):
  """A question of the run, scored again through the API (own answer, regenerated) and through
  explore.ask, gets the answer and the 26 metrics the track stage computed, with the calibrated birth
  thresholds of the run; the detector has both classes and its logistic parameters."""
  config, workdir, _ = tiny_default_run
  det_dir = detector.directory(oof.directory(config, workdir))
  manifest = detector.load_manifest(det_dir)
  assert manifest["birth_thresholds"] and not manifest["classifiers"]["logistic"]["degenerate"]
  assert 0 < manifest["n_hallucinated"] < manifest["n_train"]
  arrays, meta = feature_table.load_features(feature_table.directory(config, workdir))
  assert meta["birth_threshold_quantile"] == 0.5 and meta["birth_thresholds"] == manifest["birth_thresholds"]
  model, saes = explore.load_model_and_saes(config, workdir)
  assert saes.apply_b_dec_to_input  # sae.b_dec_to_input of the default
  examples = examples_lib.load_examples(config, workdir)
  for label in (0, 1):
    i = next(i for i, e in enumerate(examples) if e["label"] == label)
    out = score.score_question(config, workdir, examples[i]["question"], model=model, saes=saes)
    assert out["answer"] == examples[i]["answer_text"]
    # the same post-processing and flags as the answer stage (answer.stage.answer_record)
    assert out["flags"] == [f for f in examples[i]["flags"] if f != "similarity_tie"]
    np.testing.assert_allclose(
      list(out["metrics"].values()), arrays["X__ghosttrack"][i], rtol=1e-4, atol=1e-5
    )
    asked = explore.ask(config, workdir, examples[i]["question"], model=model, saes=saes)
    assert asked["probability"] == out["probability"] and asked["dataset"] == "wikidata"


def test_scoring_api_says_when_the_stage_would_exclude_the_answer(tiny_default_run):
  """With the default's exclusion of answers cut by the token budget, the API scores such an answer but
  says that the stage keeps it out of both classes (a random model's answers run to the budget)."""
  config, workdir, _ = tiny_default_run
  cut = config.copy_and_resolve_references()
  cut.qa.exclude_cut_answers = True
  model, saes = explore.load_model_and_saes(config, workdir)
  example = examples_lib.load_examples(config, workdir)[0]
  assert "max_new_tokens" in example["flags"]
  out = score.score_question(cut, workdir, example["question"], model=model, saes=saes)
  assert out["answer"] == example["answer_text"] and 0 <= out["probability"] <= 1
  assert out["excluded_reason"] == "cut by the token budget" and "max_new_tokens" in out["flags"]
  ok = score.score_question(config, workdir, example["question"], model=model, saes=saes)
  assert "excluded_reason" not in ok and ok["probability"] == out["probability"]
