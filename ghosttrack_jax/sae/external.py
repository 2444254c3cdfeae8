"""SAEs trained elsewhere, in place of the train stage's: `config.sae.source` names a folder of them.

Two layouts are read, anywhere below the folder:
  - SAELens: a folder per SAE with `cfg.json` and `sae_weights.safetensors` (what `SAE.save_model` writes,
    and our own export, checkpoints/<model>/saelens/); configs of SAELens 6 and of earlier versions
    (converted as SAELens converts them). Architectures "jumprelu", "topk" and "standard" (plain ReLU).
  - Gemma Scope: `params.npz` (Gemma Scope 1) or `params.safetensors` (Gemma Scope 2) with W_enc, W_dec,
    b_enc, b_dec, threshold (JumpReLU on the residual stream after the block), in a folder whose path
    names the layer ("layer_12/width_16k/average_l0_82", "resid_post/layer_12_width_16k_l0_small").

Each SAE is checked against the model before anything runs, and a misfit is a ConfigError naming the
folder, the field and its value: the hook point (the residual stream: `blocks.N.hook_resid_post` is our
layer N, `blocks.N.hook_resid_pre` our layer N - 1), the layer (one SAE for every layer the run uses),
d_in (= d_model), the width (the same for every layer), the dtype, and the settings that change what the
SAE reads: `normalize_activations` (only "none", i.e. already folded, can be applied to our residuals),
`rescale_acts_by_decoder_norm`, `finetuning_scaling_factor`, a head index, reshaped activations.

The SAEs become a `trained.TrainedSAEs` in our conventions, exactly: an SAE that subtracts b_dec before
encoding where ours does not (or the reverse) gets that folded into b_enc; one loaded by SAELens with
TransformerLens's `center_writing_weights` (gpt2-small-res-jb) reads the residual minus its mean over
d_model, and that centring (a projection) is folded into W_enc and b_enc. The codes are then the ones
the SAE computes in its own setting. Its reconstructions are of what it reads: for a centring SAE the
centred stream, so the reconstruction-error features of such SAEs include the stream's per-token mean.
"""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
from absl import logging
from safetensors.numpy import load_file

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import families, shapes
from ghosttrack_jax.lm import model as lm_model
from ghosttrack_jax.sae import export, registry

GEMMA_SCOPE_FILES = ("params.npz", "params.safetensors")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_SCOPE_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:[_/]|$)")
_SCOPE_NOT_RESIDUAL = ("attn", "mlp", "transcoder", "embedding")  # Gemma Scope's other hook points
_DTYPES = {"float32", "float64", "float16", "bfloat16"}
_ARCHS = {"jumprelu": "jumprelu", "standard": "jumprelu", "topk": "topk"}  # theirs -> ours (ReLU: theta 0)


@dataclasses.dataclass
class ExternalSAE:
  """One SAE as read, before it is put into our conventions."""

  path: str
  layer: int  # our layer index (block output); -1 for the embeddings
  arch: str  # ours: "jumprelu" (JumpReLU, plain ReLU) or "topk"
  k: int
  params: dict  # float32: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold
  apply_b_dec_to_input: bool
  centre: bool  # reads the residual minus its mean over d_model (center_writing_weights)
  prepend_bos: bool | None
  model_name: str
  input_scale: float  # our own export records the scale folded into it; 1 for anyone else's
  sha256: str


def _problem(path: str, what: str) -> ConfigError:
  return ConfigError(f"config.sae.source: the SAE in {path} does not fit this model: {what}")


def _v6(cfg: dict) -> dict:
  """A SAELens config in the version-6 layout (the conversion SAELens applies to older files)."""
  version = cfg.get("sae_lens_version") or cfg.get("metadata", {}).get("sae_lens_version") or "0"
  if int(str(version).split(".")[0] or 0) >= 6:
    return cfg
  old = {
    {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}.get(k, k): v
    for k, v in cfg.items()
  }
  arch = old.get("architecture", "standard")
  if old.get("activation_fn", old.get("activation_fn_str", "relu")) == "topk":
    arch, old["k"] = "topk", old.get("activation_fn_kwargs", {}).get("k")
  norm = old.get("normalize_activations")
  norm = ("expected_average_only_in" if norm else "none") if isinstance(norm, bool) or norm is None else norm
  meta_keys = ("model_name", "hook_name", "hook_head_index", "prepend_bos", "model_from_pretrained_kwargs")
  return {
    **old,
    "architecture": arch,
    "apply_b_dec_to_input": old.get("apply_b_dec_to_input", True),
    "normalize_activations": norm,
    "metadata": {"prepend_bos": True, **{k: old[k] for k in meta_keys if k in old}},
  }


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _layer_of_hook(path: str, hook: str) -> int:
  m = _HOOK.match(str(hook))
  if not m:
    raise _problem(
      path,
      f"hook_name={hook!r}; GhostTrack reads the residual stream: blocks.N.hook_resid_post (our layer N) "
      "or blocks.N.hook_resid_pre (our layer N - 1)",
    )
  return int(m.group(1)) - (m.group(2) == "pre")


def read_saelens(path: str) -> ExternalSAE:
  """One SAELens folder (cfg.json + sae_weights.safetensors)."""
  with open(os.path.join(path, export.CFG), encoding="utf-8") as f:
    cfg = _v6(json.load(f))
  meta = cfg.get("metadata", {})
  arch = cfg.get("architecture")
  if arch not in _ARCHS:
    raise _problem(path, f"architecture={arch!r}; supported: {sorted(_ARCHS)}")
  for field, ok in (
    ("normalize_activations", lambda v: v in (None, "none")),
    ("rescale_acts_by_decoder_norm", lambda v: not v),
    ("finetuning_scaling_factor", lambda v: not v),
    ("reshape_activations", lambda v: v in (None, "none")),
  ):
    if not ok(cfg.get(field)):
      raise _problem(
        path, f"{field}={cfg.get(field)!r}, which changes what the SAE reads and is not supported"
      )
  if meta.get("hook_head_index") is not None:
    raise _problem(path, f"hook_head_index={meta['hook_head_index']!r}: a per-head SAE, not a residual one")
  dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
  if dtype not in _DTYPES:
    raise _problem(path, f"dtype={cfg.get('dtype')!r}; supported: {sorted(_DTYPES)}")
  weights = os.path.join(path, export.WEIGHTS)
  tensors = load_file(weights)
  for name, t in tensors.items():
    if str(t.dtype) != dtype and name != "sparsity":
      raise _problem(path, f"tensor {name} is {t.dtype} but dtype={cfg.get('dtype')!r}")
  if "log_threshold" in tensors:
    tensors["threshold"] = np.exp(tensors["log_threshold"].astype(np.float32))
  params = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  d_sae = int(cfg.get("d_sae", params["W_enc"].shape[-1]))
  # SAELens's JumpReLU is relu(pre) * (pre > theta); ours is pre * (pre > theta): the same for theta >= 0.
  theta = params.get("threshold") if arch == "jumprelu" else None
  params["threshold"] = np.zeros(d_sae, np.float32) if theta is None else np.maximum(theta, 0.0)
  gt = meta.get("ghosttrack", {})
  return ExternalSAE(
    path=path,
    layer=_layer_of_hook(path, meta.get("hook_name")),
    arch=_ARCHS[arch],
    k=int(cfg.get("k") or 0),
    params=_checked(path, params, int(cfg.get("d_in", params["W_enc"].shape[0])), d_sae),
    apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
    centre=bool((meta.get("model_from_pretrained_kwargs") or {}).get("center_writing_weights", False)),
    prepend_bos=meta.get("prepend_bos"),
    model_name=str(meta.get("model_name", "")),
    input_scale=float(gt.get("input_scale", 1.0)),
    sha256=_sha256(weights),
  )


def read_gemma_scope(file: str, root: str) -> ExternalSAE:
  """One Gemma Scope params file below `root` (JumpReLU on the residual stream after block N, N from
  the path; a hook point other than the residual stream named below `root` is refused)."""
  path, name = os.path.split(file)
  below = "/" + os.path.relpath(path, root).replace(os.sep, "/")
  layer = _SCOPE_LAYER.search(path.replace(os.sep, "/"))
  if not layer:
    raise _problem(path, f"no layer_<N> in the path of {name}, which Gemma Scope's layout names")
  other = [h for h in _SCOPE_NOT_RESIDUAL if h in below.lower()]
  if other:
    raise _problem(path, f"the path names hook point {other[0]!r}; GhostTrack reads the residual stream")
  if name.endswith(".npz"):
    with np.load(file) as data:
      raw = {k: data[k] for k in data}
  else:
    raw = load_file(file)
  params = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(v, np.float32) for k, v in raw.items()}
  missing = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(params)
  if missing:
    raise _problem(path, f"{name} lacks {sorted(missing)}")
  d_in, d_sae = params["W_enc"].shape
  return ExternalSAE(
    path=path,
    layer=int(layer.group(1)),
    arch="jumprelu",
    k=0,
    params=_checked(path, params, d_in, d_sae),
    apply_b_dec_to_input=False,
    centre=False,
    prepend_bos=True,
    model_name="",
    input_scale=1.0,
    sha256=_sha256(file),
  )


def _checked(path: str, params: dict, d_in: int, d_sae: int) -> dict:
  want = {
    "W_enc": (d_in, d_sae),
    "W_dec": (d_sae, d_in),
    "b_enc": (d_sae,),
    "b_dec": (d_in,),
    "threshold": (d_sae,),
  }
  for name, shape in want.items():
    if name not in params or params[name].shape != shape:
      got = params[name].shape if name in params else "missing"
      raise _problem(path, f"tensor {name} is {got}, d_in={d_in} and d_sae={d_sae} need {shape}")
  return {k: params[k] for k in want}


def discover(source: str) -> list[ExternalSAE]:
  """Every SAE below `source` (a folder), in path order."""
  root = os.path.expanduser(source)
  if not os.path.isdir(root):
    raise ConfigError(f"config.sae.source={source!r} is not a folder: give the folder holding the SAEs")
  found = []
  for directory, subdirs, files in sorted(os.walk(root)):
    subdirs.sort()
    if export.CFG in files and export.WEIGHTS in files:
      found.append(read_saelens(directory))
    else:
      found += [read_gemma_scope(os.path.join(directory, f), root) for f in GEMMA_SCOPE_FILES if f in files]
  if not found:
    raise ConfigError(
      f"config.sae.source={source!r} holds no SAE: expected folders with {export.CFG} + {export.WEIGHTS} "
      f"(SAELens) or {' / '.join(GEMMA_SCOPE_FILES)} (Gemma Scope)"
    )
  return found


def _to_ours(sae: ExternalSAE, apply_b_dec: bool) -> dict:
  """Params for pre = (x - apply_b_dec * b_dec) @ W + b_enc that give the SAE's own pre-activations
  pre = (C x - a * b_dec) @ W_enc + b_enc (C: centring over d_model or identity; a: its own flag)."""
  p = dict(sae.params)
  if not sae.centre and sae.apply_b_dec_to_input == apply_b_dec:
    return p
  w = p["W_enc"].astype(np.float64)
  if sae.centre:  # C x @ W = x @ C W (C is symmetric)
    w = w - w.mean(axis=0, keepdims=True)
  b_dec = p["b_dec"].astype(np.float64)
  b_enc = p["b_enc"] - sae.apply_b_dec_to_input * (b_dec @ p["W_enc"]) + apply_b_dec * (b_dec @ w)
  p["W_enc"], p["b_enc"] = w.astype(np.float32), b_enc.astype(np.float32)
  return p


def load(config) -> dict:
  """The keyword arguments of `trained.TrainedSAEs` for the SAEs of `config.sae.source`, one per layer
  the run uses (config.model.layers, or every block), checked against the model."""
  source = config.sae.source
  arch = shapes.architecture(config.model)
  layers = list(lm_model.check_layers(config.model.layers, arch.n_layers))
  by_layer: dict[int, list[ExternalSAE]] = {}
  for sae in discover(source):
    by_layer.setdefault(sae.layer, []).append(sae)
  chosen = []
  for layer in layers:
    saes = by_layer.get(layer, [])
    if len(saes) != 1:
      has = sorted(l for l in by_layer if l >= 0)
      raise ConfigError(
        f"config.sae.source={source!r} has {len(saes)} SAEs for layer {layer} (hook "
        f"blocks.{layer}.hook_resid_post or blocks.{layer + 1}.hook_resid_pre)"
        + (f": {[s.path for s in saes]}; keep one" if saes else f"; it has layers {has}")
        + f"; or set config.model.layers to the layers to use (now {layers})"
      )
    chosen.append(saes[0])
  ignored = sorted(set(by_layer) - set(layers))
  if ignored:
    logging.info("sae.source: SAEs of layers %s are not used (-1 = the embeddings)", ignored)
  first = chosen[0]
  for sae in chosen:
    d_in, width = sae.params["W_enc"].shape
    if d_in != arch.d_model:
      raise _problem(sae.path, f"d_in={d_in}, the model's d_model is {arch.d_model}")
    if (sae.arch, sae.k, width) != (first.arch, first.k, first.params["W_enc"].shape[1]):
      raise _problem(
        sae.path,
        f"architecture {sae.arch} (k {sae.k}) of width {width}, but layer {first.layer}'s is {first.arch} "
        f"(k {first.k}) of width {first.params['W_enc'].shape[1]}: every layer needs the same",
      )
  _warn_about_the_model(config, chosen)
  # The architecture decides whether codes read x - b_dec (TopK always does); JumpReLU keeps the first
  # SAE's own setting.
  apply_b_dec = registry.build(
    first.arch, d_model=first.params["W_enc"].shape[0], width=width, b_dec_to_input=first.apply_b_dec_to_input
  ).applies_b_dec_to_input
  params = [_to_ours(s, apply_b_dec) for s in chosen]
  return {
    "arch": first.arch,
    "layers": layers,
    "params": {k: np.stack([p[k] for p in params]) for k in params[0]},
    "input_scale": np.asarray([s.input_scale for s in chosen], np.float32),
    "k": first.k,
    "manifest_hash": hashlib.sha256("".join(s.sha256 for s in chosen).encode()).hexdigest(),
    "apply_b_dec_to_input": apply_b_dec,
  }


def _warn_about_the_model(config, saes: list[ExternalSAE]) -> None:
  """Settings that differ from how our run feeds the model, which the SAE may still tolerate."""
  ours = shapes.hub_id(config.model)
  names = sorted({s.model_name for s in saes if s.model_name and s.model_name != ours})
  if names:
    logging.warning("sae.source: the SAEs were trained on %s; this run's model is %s", names, ours)
  ours_bos = families.FAMILIES[config.model.family].window_bos
  if any(s.prepend_bos is not None and bool(s.prepend_bos) != ours_bos for s in saes):
    logging.warning(
      "sae.source: the SAEs were trained with prepend_bos=%s; this run's %s inputs %s",
      not ours_bos,
      config.model.family,
      "start with BOS" if ours_bos else "have no BOS (positions near the start may read differently)",
    )
