"""Stage `track` on a tiny random model with stand-in SAEs (the DESIGN.md TrainedSAEs contract):
outputs and schema, per-example agreement with a direct unbatched computation, the model's own layer
count, resume after an interruption, and refusal of mismatched SAEs."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import prompts
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect import methods
from ghosttrack_jax.errors import ConfigError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import divergence, features
from ghosttrack_jax.track import stage as track_stage
from ghosttrack_jax.track import tracker as T


class StandInSAEs:
  """JumpReLU-style SAEs per layer: encode raw [L, N, D] -> codes in scaled-input units."""

  def __init__(self, layers, d_model, width, scale, seed=0):
    rng = np.random.default_rng(seed)
    n = len(layers)
    base = rng.normal(size=(width, d_model))
    w_dec = np.stack([base + 0.4 * rng.normal(size=(width, d_model)) for _ in range(n)])
    w_dec /= np.linalg.norm(w_dec, axis=-1, keepdims=True)
    self.arch, self.layers = "jumprelu", list(layers)
    self.input_scale = np.asarray(scale, np.float32)
    self.params = {
      "W_enc": jnp.asarray(np.swapaxes(w_dec, 1, 2) * 3.0, jnp.float32),
      "b_enc": jnp.zeros((n, width)),
      "W_dec": jnp.asarray(w_dec, jnp.float32),
      "b_dec": jnp.zeros((n, d_model)),
      "threshold": jnp.full((n, width), 0.05),
    }

  def encode(self, x):
    s = jnp.asarray(self.input_scale)[:, None, None]
    pre = jnp.einsum("lnd,ldm->lnm", x * s, self.params["W_enc"]) + self.params["b_enc"][:, None]
    return jnp.where(pre > self.params["threshold"][:, None], pre, 0.0)

  def decode(self, z):
    s = jnp.asarray(self.input_scale)[:, None, None]
    return (jnp.einsum("lnm,lmd->lnd", z, self.params["W_dec"]) + self.params["b_dec"][:, None]) / s


def make_config(n_layer=3, layers=(), ablations=True):
  c = config_lib.base_config()
  c.model.name, c.model.family, c.model.source = "tiny_track", "gpt2", "random"
  c.model.random.n_layer, c.model.random.d_model, c.model.random.n_head = n_layer, 64, 4
  c.model.random.n_positions = 128
  c.model.layers = layers
  c.qa.dataset = "nq_open"
  c.tracking.top_k = 6
  c.tracking.batch_size = 4
  c.tracking.sweep_top_k = (3, 12)
  c.tracking.n_track_examples = 4
  c.evaluate.n_folds = 2
  c.evaluate.ablations = ablations
  return c


@functools.lru_cache(maxsize=None)
def model_for(n_layer, layers):
  return lm.load_model(make_config(n_layer, layers).model)


def saes_for(model, width=96, seed=0):
  ids, mask = model.encode_batch(["Some text to calibrate the input scale of the stand-in SAEs."])
  x = np.asarray(jax.device_get(model.residuals(ids, mask)))[:, 0, 1:]
  scale = 1.0 / np.sqrt((x**2).sum(-1).mean(-1))
  return StandInSAEs(model.layers, model.d_model, width, scale, seed)


QUESTIONS = [
  "who wrote hamlet",
  "capital of france",
  "largest planet",
  "boiling point of water",
  "first man on the moon",
  "speed of light",
  "author of war and peace",
  "tallest mountain",
  "year the war ended",
  "inventor of the telephone",
]


def write_examples(config, workdir, model):
  examples = []
  for i, q in enumerate(QUESTIONS):
    prompt = model.encode(f"Q: {q}?\nA:")
    answer = model.encode(" " + " ".join(["yes", "maybe", "no idea at all"][: 1 + i % 3]))
    examples.append(
      {
        "id": f"nq-{i:03d}",
        "question": q,
        "prompt_ids": prompt,
        "answer_ids": answer,
        "answer_text": model.tokenizer.decode(answer),
        "gold": ["x"],
        "label": i % 2,
        "label_method": "containment",
        "labels_all": {"containment": i % 2},
        "mode": "own_answer",
        "flags": [],
      }
    )
  out_dir = paths.for_config(config, workdir).answers(config.qa.dataset)
  os.makedirs(out_dir, exist_ok=True)
  answer_stage.fold_and_write(config, examples, [], prompts.PromptFormat("fewshot", [("Q?", "A")]), out_dir)
  return examples_lib.load_examples(config, workdir)


def out_dir(config, workdir):
  return os.path.join(paths.for_config(config, workdir).tracking, config.qa.dataset)


def load(config, workdir):
  d = out_dir(config, workdir)
  with np.load(os.path.join(d, "features.npz"), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  return arrays, atomic_io.read_json(os.path.join(d, "features.json"))


def direct_row(model, saes, example, cfg):
  """Unbatched, unpadded reference for one example: metrics and scalar baselines."""
  ids = np.array([example["prompt_ids"] + example["answer_ids"]], np.int32)
  logits, resid = jax.device_get(model.logits_and_residuals(ids, np.ones_like(ids)))
  p, a = len(example["prompt_ids"]), len(example["answer_ids"])
  x = resid[:, 0, p : p + a]  # [L, A, D]
  codes = np.asarray(saes.encode(jnp.asarray(x)))
  pooled = codes.max(axis=1)[None]  # answer_max
  _, tr = T.track_pooled(pooled, T.unit_decoder(saes.params["W_dec"]), cfg)
  logp = jax.nn.log_softmax(jnp.asarray(logits[0, p - 1 : p + a - 1]), axis=-1)
  logp = np.asarray(logp, np.float64)
  nll = -logp[np.arange(a), example["answer_ids"]]
  ent = -(np.exp(logp) * logp).sum(-1)
  scalars = np.array([nll.mean(), nll.max(), ent.mean(), nll.sum()])
  positions = {"tbg": resid[:, 0, p - 1], "ans_first": x[:, 0], "ans_last": x[:, -1]}
  return divergence.track_metrics(tr)[0], scalars, x.mean(1), positions


def test_stage_outputs_and_agreement(tmp_path):
  config = make_config()
  model = model_for(3, ())
  saes = saes_for(model)
  examples = write_examples(config, tmp_path, model)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  d = out_dir(config, tmp_path)
  assert atomic_io.is_done(d) and not os.path.exists(os.path.join(d, "partial"))
  arrays, meta = load(config, tmp_path)
  n = len(examples)
  assert meta["n_layers"] == model.n_layers == 3 and meta["layers"] == [0, 1, 2]
  assert meta["schema_version"] == 1 and meta["top_k"] == 6 and meta["pooling"] == "answer_max"
  names = set(meta["feature_sets"])
  want = {
    "ghosttrack",
    "reconstruction",
    "scalar_baselines",
    "raw_resid",
    "sae_pooled",
    "ghosttrack_greedy",
    "ghosttrack_feature_id",
    "ghosttrack_no_association",
    "ghosttrack_single_hypothesis",
    "ghosttrack_topk3",
    "ghosttrack_topk12",
    "ghosttrack_pool_answer_mean",
    "ghosttrack_pool_last_token",
    "ghosttrack_pool_max_all",
    "greedy_mismatch",
    "tbg",
    "ans_first",
    "ans_last",
  }
  assert want == names
  assert meta["feature_sets"]["ghosttrack"]["columns"] == list(divergence.METRIC_NAMES)
  assert arrays["X__ghosttrack"].shape == (n, 26)
  assert arrays["X__raw_resid"].shape == (n, 3, 64)
  assert arrays["X__sae_pooled"].shape == (n, 3, 96)
  assert arrays["X__scalar_baselines"].shape == (n, 6)
  np.testing.assert_array_equal(arrays["example_id"], [e["id"] for e in examples])
  np.testing.assert_array_equal(arrays["label"], [e["label"] for e in examples])
  folds = examples_lib.load_folds(config, str(tmp_path))
  np.testing.assert_array_equal(arrays["folds"], folds["folds"])
  # every row equals an unbatched, unpadded computation of the same example
  cfg = T.TrackerConfig.from_config(config.tracking)
  for i, ex in enumerate(examples):
    metrics, scalars, raw, positions = direct_row(model, saes, ex, cfg)
    np.testing.assert_allclose(arrays["X__ghosttrack"][i], metrics, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays["X__scalar_baselines"][i, 2:], scalars, rtol=1e-4, atol=1e-4)
    for name, want_x in positions.items():  # stored as float16
      np.testing.assert_allclose(arrays["X__" + name][i].astype(np.float32), want_x, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(arrays["X__raw_resid"][i], raw, rtol=1e-4, atol=1e-4)
    assert arrays["X__scalar_baselines"][i, 0] == len(ex["answer_ids"])
  # the ablations and sweeps really differ from the default somewhere
  gt = arrays["X__ghosttrack"]
  for name in ("ghosttrack_no_association", "ghosttrack_single_hypothesis", "ghosttrack_topk3"):
    assert not np.allclose(arrays["X__" + name], gt), name
  # tracks, summaries, degeneracy report
  with np.load(os.path.join(d, "tracks.npz"), allow_pickle=False) as z:
    tr = {k: z[k] for k in z.files}
  assert tr["act"].shape[0] == 4 and tr["act"].shape[2] == 3 and set(tr["label"]) == {0, 1}
  with np.load(os.path.join(d, "summaries.npz"), allow_pickle=False) as z:
    sm = {k: z[k] for k in z.files}
  assert sm["layer_density"].shape == (n, 3)
  np.testing.assert_array_equal(sm["layer_density"].max(1), gt[:, 23])
  deg = atomic_io.read_json(os.path.join(d, "degeneracy.json"))
  assert "effective_rank_99" in deg["sets"]["ghosttrack"] and len(deg["pooled_activation_per_layer"]) == 3
  # detect reads the table
  data = methods.load_feature_data(config, str(tmp_path))
  assert data.sets["ghosttrack"].shape == (n, 26)
  # a second run is skipped
  track_stage.run(config, str(tmp_path), model=object(), saes=object())


def test_uses_the_models_layer_subset_and_checks_saes(tmp_path):
  config = make_config(n_layer=3, layers=(0, 2), ablations=False)
  model = model_for(3, (0, 2))
  assert model.n_layers == 2
  saes = saes_for(model)
  write_examples(config, tmp_path, model)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  arrays, meta = load(config, tmp_path)
  assert meta["n_layers"] == 2 and meta["layers"] == [0, 2]
  assert set(meta["feature_sets"]) == {
    "ghosttrack",
    "reconstruction",
    "scalar_baselines",
    "raw_resid",
    "sae_pooled",
    "greedy_mismatch",
    "tbg",
    "ans_first",
    "ans_last",
  }
  assert arrays["X__raw_resid"].shape[1] == 2
  # SAEs for other layers are refused
  bad = saes_for(model_for(3, ()))
  config2 = make_config(n_layer=3, layers=(0, 2), ablations=False)
  config2.qa.dataset = "truthfulqa"
  with pytest.raises(StoreMismatchError):
    features.Featurizer(model, bad, config2)


def test_resume_after_interruption(tmp_path, monkeypatch):
  config = make_config(ablations=False)
  model = model_for(3, ())
  saes = saes_for(model)
  write_examples(config, tmp_path, model)
  calls, fail = [], [True]
  real = features.Featurizer.features

  def flaky(self, batch):
    calls.append(batch.rows.tolist())
    if len(calls) == 2 and fail[0]:
      fail[0] = False
      raise RuntimeError("simulated interruption")
    return real(self, batch)

  monkeypatch.setattr(features.Featurizer, "features", flaky)
  with pytest.raises(RuntimeError, match="simulated"):
    track_stage.run(config, str(tmp_path), model=model, saes=saes)
  partial = os.path.join(out_dir(config, tmp_path), "partial")
  assert sorted(os.listdir(partial)) == ["batch_00000.npz", "key.json"]
  calls.clear()
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  assert len(calls) == 2  # batches 1 and 2 of 3; batch 0 came from partial/
  resumed, _ = load(config, tmp_path)
  atomic_io.clear_done(out_dir(config, tmp_path))
  monkeypatch.setattr(features.Featurizer, "features", real)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  fresh, _ = load(config, tmp_path)
  for k in ("X__ghosttrack", "X__reconstruction", "X__scalar_baselines"):
    np.testing.assert_array_equal(resumed[k], fresh[k])


def test_a_damaged_saved_batch_is_recomputed_not_reused(tmp_path, monkeypatch, caplog):
  config = make_config(ablations=False)
  model = model_for(3, ())
  saes = saes_for(model)
  write_examples(config, tmp_path, model)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  fresh, _ = load(config, tmp_path)
  atomic_io.clear_done(out_dir(config, tmp_path))
  real, calls = features.Featurizer.features, []

  def interrupted(self, batch):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("simulated interruption")
    return real(self, batch)

  monkeypatch.setattr(features.Featurizer, "features", interrupted)
  with pytest.raises(RuntimeError, match="simulated"):
    track_stage.run(config, str(tmp_path), model=model, saes=saes)
  saved = os.path.join(out_dir(config, tmp_path), "partial", "batch_00000.npz")
  with open(saved, "r+b") as f:  # a truncated batch file, as a full disk or a crash of the disk leaves
    f.truncate(os.path.getsize(saved) // 2)
  monkeypatch.setattr(features.Featurizer, "features", real)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  assert "batch_00000.npz cannot be read" in caplog.text
  resumed, _ = load(config, tmp_path)
  for k in ("X__ghosttrack", "X__reconstruction", "X__scalar_baselines"):
    np.testing.assert_array_equal(resumed[k], fresh[k])


def test_tracked_sets_plan():
  c = make_config()
  names = [s.name for s in features.tracked_sets(c)]
  assert names[0] == "ghosttrack" and len(names) == len(set(names))
  c.evaluate.ablations = False
  assert [s.name for s in features.tracked_sets(c)] == ["ghosttrack"]
  c = make_config()
  c.tracking.association = "greedy"
  names = [s.name for s in features.tracked_sets(c)]
  assert "ghosttrack_hungarian" in names and "ghosttrack_greedy" not in names


def test_birth_threshold_quantile(tmp_path):
  config = make_config(ablations=False)
  config.tracking.birth_threshold_quantile = 0.5
  model = model_for(3, ())
  saes = saes_for(model)
  examples = write_examples(config, tmp_path, model)
  track_stage.run(config, str(tmp_path), model=model, saes=saes)
  arrays, meta = load(config, tmp_path)
  thr = meta["birth_thresholds"]["answer_max"]
  assert meta["feature_sets"]["ghosttrack"]["variant"]["birth_threshold"] == thr
  # the threshold is the median of the positive selected activations, over all examples and layers
  ex = features.Featurizer(model, saes, config, birth_thresholds={"answer_max": thr})
  batch = features.make_batch(
    examples, np.arange(len(examples)), len(examples), model.pad_id, int(model.max_positions)
  )
  feats = ex.features(batch)
  act = feats["sel_act__answer_max"][..., : config.tracking.top_k]
  assert thr == pytest.approx(np.quantile(act[act > 0], 0.5))
  np.testing.assert_allclose(ex.track(feats)["X__ghosttrack"], arrays["X__ghosttrack"], atol=1e-5)
  assert arrays["X__ghosttrack"][:, 4].min() > 0  # every text has tracks at this threshold
  with pytest.raises(ConfigError):  # without the calibrated thresholds an extractor cannot track
    features.Featurizer(model, saes, config)(batch)
