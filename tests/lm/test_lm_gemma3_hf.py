"""Gemma 3 from a Hugging Face checkpoint directory (lm.hf_gemma3): a tiny random checkpoint, written by
scripts/make_gemma3_reference.py's `write_tiny_checkpoint`, against the logits transformers 5's PyTorch
Gemma3ForCausalLM computes from the same directory (tests/fixtures/gemma3_tiny_hf_reference.npz). Its
norm weights are far from 0, so the (1 + w) convention is checked; its 40 tokens run past the 8-token
window and through the global sixth block."""

import importlib.util
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.errors import ModelLoadError
from ghosttrack_jax.lm import loading, shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "gemma3_tiny_hf_reference.npz")


def _script():
  spec = importlib.util.spec_from_file_location(
    "make_gemma3_reference", os.path.join(REPO, "scripts", "make_gemma3_reference.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _model_config(source):
  c = config_lib.base_config().model
  c.name, c.family, c.source, c.tokenizer = "tiny_gemma3_hf", "gemma3", str(source), loading.SMOLLM2_TOKENIZER
  return c


def _check(model, ref):
  logits = np.asarray(model.logits(ref["token_ids"][None]))[0].astype(np.float64)
  np.testing.assert_array_equal(logits.argmax(-1), ref["argmax"])
  np.testing.assert_allclose(np.take_along_axis(logits, ref["top_ids"], -1), ref["top_logits"], atol=1e-4)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  np.testing.assert_allclose(lse, ref["lse"], atol=1e-4)


def test_a_checkpoint_directory_gives_the_reference_logits(tmp_path):
  script, ref = _script(), np.load(FIXTURE)
  text_dir = tmp_path / "text"
  script.write_tiny_checkpoint(str(text_dir))
  c = _model_config(text_dir)
  arch = shapes.architecture(c)
  assert (arch.family, arch.n_layers, arch.d_model, arch.hd, arch.n_kv_heads) == ("gemma3", 6, 32, 16, 1)
  model = lm.load_model(c)
  assert model.hf_config.layer_types[5] == "full_attention" and "lm_head" not in model.params
  _check(model, ref)

  # The same language model inside a multimodal checkpoint: text_config, prefixed names, a vision tower.
  mm_dir = tmp_path / "multimodal"
  mm_dir.mkdir()
  tensors = {
    k.replace("model.", "language_model.model.", 1): v
    for k, v in load_file(str(text_dir / "model.safetensors")).items()
  }
  tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3), np.float32)
  save_file(tensors, str(mm_dir / "model.safetensors"))
  (mm_dir / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": script.TINY}))
  _check(lm.load_model(_model_config(mm_dir)), ref)


def test_a_directory_that_is_not_a_gemma3_checkpoint(tmp_path):
  with pytest.raises(ModelLoadError, match="local checkpoint directory"):
    lm.load_model(_model_config(tmp_path))
  _script().write_tiny_checkpoint(str(tmp_path))
  cfg = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**cfg, "head_dim": 8}))
  with pytest.raises(
    ModelLoadError, match=r"\['k_norm'\]\['weight'\] has shape \(16,\), the config's model needs \(8,\)"
  ):
    lm.load_model(_model_config(tmp_path))
