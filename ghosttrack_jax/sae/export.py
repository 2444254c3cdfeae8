"""SAELens v6 export (docs/sae_recipes.md §6.1): one folder per layer with `sae_weights.safetensors` + `cfg.json`
(+ `sparsity.safetensors`), and a reader that loads it back bit-identically.

The input scale s is folded into the weights (W_enc*s, W_dec/s, b_dec/s; b_enc and theta unchanged), so
the exported SAE takes raw residuals and `normalize_activations` is "none". The model is named as the
ecosystem names it (`lm.shapes.hub_id`: "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", ...), with the
TransformerLens loading settings that give the residuals the SAEs were trained on: the raw stream, so
`center_writing_weights` off (TransformerLens centres it by default; folding norms leaves it as it is),
and BOS prepended only for the models whose windows start with it (Gemma 3). Architecture mapping:
JumpReLU, BatchTopK (theta_glob for every latent) and legacy relu_l1 -> "jumprelu"; TopK -> "topk".
`metadata.ghosttrack` records what SAELens has no field for (our arch, s, training summary).
"""

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from ghosttrack_jax.runtime import atomic_io, progress
from ghosttrack_jax.sae import common

SAE_LENS_VERSION = "6.18.0"  # the v6 format these files follow (SAELens @ 91ca16c)
WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
SPARSITY = "sparsity.safetensors"


def layer_dir(root: str, layer: int) -> str:
  return os.path.join(root, f"layer_{int(layer):02d}")


def saelens_cfg(
  arch: common.Architecture,
  layer: int,
  model_name: str,
  context_size: int,
  input_scale: float,
  extra: dict | None = None,
  prepend_bos: bool = False,
) -> dict:
  cfg = {
    "architecture": arch.export_arch,
    "d_in": arch.d_model,
    "d_sae": arch.width,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": bool(arch.applies_b_dec_to_input),
    "normalize_activations": "none",  # s is folded into the weights
    "reshape_activations": "none",
    "metadata": {
      "sae_lens_version": SAE_LENS_VERSION,
      "sae_lens_training_version": None,
      "model_name": model_name,
      "hook_name": f"blocks.{int(layer)}.hook_resid_post",
      "hook_head_index": None,
      "context_size": int(context_size),
      "prepend_bos": bool(prepend_bos),  # packed windows, BOS first for Gemma; position 0 not trained on
      "seqpos_slice": [1, None],
      "model_from_pretrained_kwargs": {"center_writing_weights": False},
      "ghosttrack": {
        "arch": arch.name,
        "layer": int(layer),
        "input_scale": float(input_scale),
        **(extra or {}),
      },
    },
  }
  cfg.update(arch.saelens_fields())
  return cfg


def write_layer(
  directory: str, arch: common.Architecture, params: dict, cfg: dict, sparsity: np.ndarray | None = None
) -> None:
  """Writes one layer's export. `params` are ALREADY folded (raw-unit) numpy arrays."""
  os.makedirs(directory, exist_ok=True)
  tensors = {
    k: np.ascontiguousarray(np.asarray(params[k], np.float32)) for k in ("W_enc", "W_dec", "b_enc", "b_dec")
  }
  if cfg["architecture"] == "jumprelu":
    tensors["threshold"] = np.ascontiguousarray(np.asarray(params["threshold"], np.float32))
  with atomic_io.atomic_path(os.path.join(directory, WEIGHTS)) as tmp:
    save_file(tensors, tmp)
  if sparsity is not None:
    with atomic_io.atomic_path(os.path.join(directory, SPARSITY)) as tmp:
      save_file({"sparsity": np.ascontiguousarray(np.asarray(sparsity, np.float32))}, tmp)
  atomic_io.atomic_write_json(os.path.join(directory, CFG), cfg)
  del arch


def write_all(
  root: str,
  arch: common.Architecture,
  final,
  layers,
  model_name: str,
  context_size: int,
  sparsity=None,
  extra: dict | None = None,
  prepend_bos: bool = False,
) -> None:
  """Exports every layer of `final` (train.stage.FinalSAEs: stacked training-unit params + scales)."""
  folded = common.fold_input_scale(final.params, final.input_scale)
  for i, layer in enumerate(progress.track(layers, "export", "layer")):
    p = {k: np.asarray(v[i]) for k, v in folded.items()}
    cfg = saelens_cfg(arch, layer, model_name, context_size, float(final.input_scale[i]), extra, prepend_bos)
    write_layer(layer_dir(root, layer), arch, p, cfg, None if sparsity is None else sparsity[i])


def read_saelens(directory: str) -> tuple[dict, dict]:
  """(params, cfg) of one exported layer; params as in memory (threshold zeros for "topk")."""
  cfg_path = os.path.join(directory, CFG)
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"no SAELens export at {directory} ({CFG} missing)")
  with open(cfg_path, encoding="utf-8") as f:
    cfg = json.load(f)
  tensors = load_file(os.path.join(directory, WEIGHTS))
  params = {k: tensors[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
  params["threshold"] = tensors.get("threshold", np.zeros((cfg["d_sae"],), np.float32))
  return params, cfg
