"""End to end on the tiny random GPT-2: answer (given-text) -> track -> detect -> score_question / CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghosttrack_jax import config_lib, lm  # noqa: F401
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect import score
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.report import stage as report_stage
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
