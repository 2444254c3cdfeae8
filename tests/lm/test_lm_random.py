"""LanguageModel on tiny random GPT-2, Llama and Gemma 3 models: residual capture, logits, replacement,
generation (the Gemma 3 model's sliding window is 8 tokens, so windows bind here)."""

import functools
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from transformers.models.llama import modeling_flax_llama as mfl

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import families, gemma3

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world", "A"]


def model_config(family, n_layer=3, layers=()):
  c = config_lib.base_config().model
  c.name, c.family, c.source = f"tiny_{family}", family, "random"
  c.random.n_layer, c.random.d_model, c.random.n_head = n_layer, 64, 4
  c.random.n_positions = 256
  c.layers = layers
  return c


@functools.lru_cache(maxsize=None)
def tiny_model(family):
  return lm.load_model(model_config(family))


@pytest.fixture(params=["gpt2", "llama", "gemma3"])
def model(request):
  return tiny_model(request.param)


def final_norm(model, x):
  cfg, body = model.hf_config, model.params[model._family.prefix]
  if model.family == "gpt2":
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon).apply({"params": body["ln_f"]}, x)
  if model.family == "gemma3":
    return gemma3.RMSNorm(cfg.rms_norm_eps).apply({"params": body["norm"]}, x)
  return mfl.FlaxLlamaRMSNorm(cfg).apply({"params": body["norm"]}, x)


def hidden_states(model, ids, mask):
  """(hidden states after the embedding and each block, with the final norm on the last; logits): from
  transformers' own Flax model, or for Gemma 3 (which has none) from its blocks applied one by one."""
  if model.family != "gemma3":
    out = model._family.lm_cls(model.hf_config, _do_init=False)(
      ids, attention_mask=mask, params=model.params, output_hidden_states=True
    )
    return out.hidden_states, out.logits
  cfg, body = model.hf_config, model.params["model"]
  x = body["embed_tokens"]["embedding"][ids] * math.sqrt(cfg.hidden_size)
  hs, pos = [x], lm.model.positions(jnp.asarray(mask))
  for i in range(cfg.num_hidden_layers):
    block = gemma3.Gemma3Block(cfg, name=str(i))
    x = block.apply({"params": body["layers"][str(i)]}, x, jnp.asarray(mask), pos)[0]
    hs.append(x)
  hs[-1] = final_norm(model, x)
  return hs, hs[-1] @ body["embed_tokens"]["embedding"].T


def test_attributes(model):
  assert model.n_blocks == model.n_layers == 3 and model.layers == (0, 1, 2)
  assert model.d_model == 64
  assert model.vocab_size == len(model.tokenizer)
  assert model.pad_id == model.eos_id  # pad falls back to eos
  assert model.bos_id is None  # none of the bundled tokenizers prepends BOS
  assert model.encode(TEXTS[1]) == model.tokenizer(TEXTS[1])["input_ids"]


def test_residuals_are_block_outputs(model):
  """Blocks 0..L-2 equal hidden_states[1..L-1]; the last is pre-final-norm: norm(last) == hidden_states[L]."""
  ids, mask = model.encode_batch(TEXTS[:1])
  resid = model.residuals(ids, mask)
  L = model.n_blocks
  assert resid.shape == (L, 1, ids.shape[1], model.d_model) and resid.dtype == jnp.float32
  hs, hf_logits = hidden_states(model, ids, mask)
  assert len(hs) == L + 1
  for i in range(L - 1):
    np.testing.assert_allclose(resid[i], hs[i + 1], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(final_norm(model, resid[L - 1]), hs[L], atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(resid[L - 1] - hs[L]))) > 0.1  # the last entry is not a raw residual
  logits, resid2 = model.logits_and_residuals(ids, mask)
  np.testing.assert_array_equal(resid2, resid)
  np.testing.assert_allclose(logits, hf_logits, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(model.logits(ids, mask), logits, atol=1e-6)


def test_padding_does_not_change_real_tokens(model):
  """Right- and left-padded rows give the same residuals and logits on their real tokens."""
  single = [model.residuals(*model.encode_batch([t])) for t in TEXTS]
  for side in ("right", "left"):
    ids, mask = model.encode_batch(TEXTS, padding_side=side)
    resid = model.residuals(ids, mask)
    for b, ref in enumerate(single):
      n = ref.shape[2]
      got = resid[:, b, :n] if side == "right" else resid[:, b, ids.shape[1] - n :]
      np.testing.assert_allclose(got, ref[:, 0], atol=1e-5, rtol=1e-5)


def test_layer_subset():
  sub = lm.load_model(model_config("gpt2", layers=(0, 2)))
  full = tiny_model("gpt2")
  assert sub.layers == (0, 2) and sub.n_layers == 2 and sub.n_blocks == 3
  ids, mask = sub.encode_batch(TEXTS[:2])
  np.testing.assert_array_equal(sub.residuals(ids, mask), full.residuals(ids, mask)[jnp.array([0, 2])])
  with pytest.raises(ConfigError, match="strictly increasing"):
    lm.load_model(model_config("gpt2", layers=(2, 0)))
  with pytest.raises(ConfigError, match="0..2"):
    lm.load_model(model_config("gpt2", layers=(3,)))


def test_logits_with_replacement(model):
  ids, mask = model.encode_batch(TEXTS, padding_side="right")
  logits, resid = model.logits_and_residuals(ids, mask)
  fn = model.logits_with_replacement_fn
  before = fn._cache_size()
  for layer in (0, 2):
    same = model.logits_with_replacement(ids, mask, layer, resid[layer])
    np.testing.assert_allclose(same, logits, atol=1e-5, rtol=1e-5)
    zeroed = model.logits_with_replacement(ids, mask, layer, jnp.zeros_like(resid[layer]))
    assert float(jnp.max(jnp.abs(zeroed - logits))) > 1e-2
  assert fn._cache_size() == before + 1  # one compile for both layers
  # Causality: replacing position t changes logits at t and later, never before.
  t = 4
  new = resid[1].at[:, t].set(0.0)
  part = model.logits_with_replacement(ids, mask, 1, new)
  np.testing.assert_allclose(part[:, :t], logits[:, :t], atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(part[0, t] - logits[0, t]))) > 1e-2
  # A layer index that matches no block leaves the model unchanged.
  np.testing.assert_allclose(model.logits_with_replacement(ids, mask, 99, new), logits, atol=1e-5)


def naive_greedy(model, prompt_ids, n, width=32):
  """Greedy decoding by full forward passes, no cache. The sequence sits right-padded in a fixed
  width (one compile); causal attention makes the padding invisible to the real tokens."""
  ids = list(prompt_ids)
  for _ in range(n):
    buf = np.full((1, width), model.pad_id, np.int32)
    buf[0, : len(ids)] = ids
    ids.append(int(jnp.argmax(model.logits(buf)[0, len(ids) - 1])))
  return ids[len(prompt_ids) :]


def test_generate_matches_naive_loop(model):
  prompts = ["The quick brown fox jumps over the lazy dog and then", "Hello", "One two three"]
  gens = model.generate(prompts, max_new_tokens=8, batch_size=2)
  assert [g.prompt for g in gens] == prompts
  for p, g in zip(prompts, gens):
    assert g.prompt_ids == model.encode(p)
    assert g.answer_ids == naive_greedy(model, g.prompt_ids, 8) and not g.hit_eos
    assert g.answer == model.tokenizer.decode(g.answer_ids, skip_special_tokens=True)


def test_generate_stops_at_eos(model):
  prompt = "Hello world"
  ref = naive_greedy(model, model.encode(prompt), 8)
  k = next(i for i in range(1, 8) if ref[i] not in ref[:i])  # a token not produced before step k
  saved = model.eos_id
  model.eos_id = ref[k]  # pretend that token is EOS
  try:
    gens = model.generate([prompt, "Another prompt here"], max_new_tokens=8, batch_size=2)
  finally:
    model.eos_id = saved
  assert gens[0].answer_ids == ref[:k] and gens[0].hit_eos


def test_format_prompt(model):
  if model.family == "gpt2":  # the GPT-2 tokenizer has no chat template
    assert model.format_prompt("Why?") == "Why?"
    with pytest.raises(ConfigError, match="no chat template"):
      model.format_prompt("Why?", use_chat_template=True)
  else:
    text = model.format_prompt("Why?")
    assert text.endswith("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n")
    assert model.format_prompt("Why?", use_chat_template=False) == "Why?"


def test_samples_share_the_prefill_and_are_the_models_own(model):
  """Greedy answers are unchanged by sampling; each sample's log-probabilities and block outputs are
  those of a teacher-forced pass over prompt + sample."""
  prompts = ["The quick brown fox jumps over the lazy dog and then", "Hello", "One two three"]
  greedy = model.generate(prompts, max_new_tokens=6, batch_size=2)
  block = model.n_blocks // 2
  gens = model.generate(prompts, max_new_tokens=6, batch_size=2, n_samples=3, seeds=[1, 2, 3])
  assert [g.answer_ids for g in gens] == [g.answer_ids for g in greedy]
  for g in gens:
    assert len(g.samples) == 3
    for s in g.samples:
      assert len(s.ids) + s.hit_eos == len(s.logprobs) == len(s.embeddings) and s.ids
      ids = np.asarray([g.prompt_ids + s.ids + [model.eos_id] * s.hit_eos], np.int32)
      logits, resid = model.logits_and_residuals(ids)
      logp = np.asarray(jax_log_softmax(np.asarray(logits[0], np.float64)))
      start = len(g.prompt_ids)
      want = [logp[start - 1 + i, t] for i, t in enumerate(ids[0, start:])]
      np.testing.assert_allclose(s.logprobs, want, atol=2e-4)
      got_emb = np.asarray(resid[list(model.layers).index(block), 0, start:])
      np.testing.assert_allclose(s.embeddings, got_emb, atol=2e-4, rtol=1e-4)
  # samples differ between seeds and across a prompt's samples (a random model's flat distribution)
  assert len({tuple(s.ids) for g in gens for s in g.samples}) > 3


def test_samples_depend_on_the_seed_not_the_batch(model):
  prompts = ["Hello", "One two three", "The quick brown fox"]
  a = model.generate(prompts, max_new_tokens=5, batch_size=2, n_samples=2, seeds=[7, 8, 9])
  b = model.generate(prompts[::-1], max_new_tokens=5, batch_size=3, n_samples=2, seeds=[9, 8, 7])
  for x, y in zip(a, b[::-1]):
    assert [s.ids for s in x.samples] == [s.ids for s in y.samples]
  c = model.generate(prompts, max_new_tokens=5, batch_size=2, n_samples=2, seeds=[70, 80, 90])
  assert [s.ids for g in a for s in g.samples] != [s.ids for g in c for s in g.samples]


def test_cold_samples_are_greedy(model):
  gens = model.generate(["Hello", "One two three"], 5, 2, n_samples=2, seeds=[1, 2], temperature=1e-6)
  for g in gens:
    assert all(s.ids == g.answer_ids for s in g.samples)


def jax_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_stop_at_newline_ends_at_the_first_newline_token(model):
  from ghosttrack_jax.lm import generation

  mask = generation.stop_token_mask(model, True)
  newline_ids = [i for i in np.flatnonzero(mask) if i != model.eos_id]
  assert newline_ids and all("\n" in model.tokenizer.decode([i]) for i in newline_ids[:50])
  prompt = "One two three"
  full = model.generate([prompt], max_new_tokens=8, batch_size=1)[0].answer_ids
  saved = mask.copy()
  mask[full[2]] = True  # pretend the third greedy token contains a newline
  try:
    cut = model.generate([prompt], 8, 1, stop_at_newline=True)[0].answer_ids
    smp = model.generate([prompt], 8, 1, stop_at_newline=True, n_samples=2, seeds=[3], temperature=1e-6)
  finally:
    mask[:] = saved
  k = full.index(full[2])
  assert cut == full[: k + 1]
  assert all(s.ids == full[: k + 1] for s in smp[0].samples)


def test_gemma3_sliding_window():
  """A sliding-window block sees the last 8 tokens, so through the tiny model's three (all sliding) a
  token reaches 3 x 7 positions ahead and no further; a sixth block, global, sees the whole prefix."""
  assert families.RANDOM_GEMMA3_WINDOW == 8
  text = " ".join(["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 4)
  for n_layer, reach in ((3, 21), (6, None)):
    model = tiny_model("gemma3") if n_layer == 3 else lm.load_model(model_config("gemma3", n_layer))
    ids, _ = model.encode_batch([text])
    changed = ids.copy()
    changed[0, 1] = (ids[0, 1] + 1) % model.vocab_size
    diff = np.abs(np.asarray(model.logits(ids)) - np.asarray(model.logits(changed))).max(-1)[0]
    assert ids.shape[1] > 1 + 21 + 5 and diff[1] > 0
    if reach is None:
      assert diff[1 + 21 + 1 :].min() > 0
    else:
      assert diff[1 + reach] > 0 and diff[1 + reach + 1 :].max() == 0
