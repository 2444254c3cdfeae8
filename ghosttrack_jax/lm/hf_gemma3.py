"""Gemma 3 weights from a local Hugging Face checkpoint directory (config.json + *.safetensors), no torch.

For the Gemma 3 models that no package ships as a GGUF (1B, 4B, ... as downloaded from the hub): the
text model's config (`Gemma3TextConfig`, or the `text_config` of a multimodal `gemma3` checkpoint, whose
language-model tensors carry a `language_model.` prefix and whose vision tower is skipped), every
tensor read with safetensors' numpy reader (bfloat16 through ml_dtypes) into the params tree of
`gemma3.Gemma3Module`, whose names follow transformers' (projections transposed into Flax kernels; the
norm weights are stored as w, the convention `gemma3.RMSNorm` uses, so they are taken as they are).
The tokenizer is the directory's own (tokenizer.json).
"""

import glob
import json
import os

import numpy as np
from safetensors.numpy import load_file
from transformers import Gemma3TextConfig

from ghosttrack_jax.errors import ModelLoadError
from ghosttrack_jax.lm import gemma3

_MODEL_TYPES = ("gemma3_text", "gemma3")


def is_gemma3_dir(path: str) -> bool:
  """True when `path` is a directory whose config.json describes a Gemma 3 model."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return False
  with open(cfg, encoding="utf-8") as f:
    return json.load(f).get("model_type") in _MODEL_TYPES


def gemma3_config(path: str) -> tuple[Gemma3TextConfig, str]:
  """(the text model's config, the prefix of its tensors' names) of a checkpoint directory."""
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    d = json.load(f)
  if d.get("model_type") == "gemma3":  # multimodal: the language model is one part
    return Gemma3TextConfig(**d["text_config"]), "language_model.model."
  if d.get("model_type") != "gemma3_text":
    raise ModelLoadError(f"{path}/config.json has model_type {d.get('model_type')!r}, not Gemma 3")
  return Gemma3TextConfig(**d), "model."


def gemma3_params(path: str, cfg: Gemma3TextConfig, prefix: str) -> dict:
  """The params tree {"model": ...} (numpy float32), checked against the module's shapes."""
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise ModelLoadError(f"no *.safetensors in {path}: download the checkpoint's weights there")
  model: dict = {}
  params: dict = {"model": model}
  for file in files:
    for name, w in load_file(file).items():
      w = np.asarray(w, np.float32)
      if name == "lm_head.weight" or name.endswith(".lm_head.weight"):
        params["lm_head"] = {"kernel": np.ascontiguousarray(w.T)}
        continue
      if not name.startswith(prefix):
        continue  # a multimodal checkpoint's vision tower and projector
      *path_, leaf = name[len(prefix) :].split(".")
      node = model
      for key in path_:
        node = node.setdefault(key, {})
      if leaf != "weight":
        raise ModelLoadError(f"unexpected tensor {name!r} in {file}; it is not a Gemma 3 text model")
      if path_[-1].endswith("_proj"):
        node["kernel"] = np.ascontiguousarray(w.T)
      elif path_[-1] == "embed_tokens":
        node["embedding"] = w
      else:
        node["weight"] = w
  if cfg.tie_word_embeddings:
    params.pop("lm_head", None)  # the head is the embedding matrix (Family.logits)
  gemma3.check_shapes(model, cfg, path)
  return params
