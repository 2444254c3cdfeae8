"""What differs between the supported architectures (GPT-2, Llama, Gemma 3), in one table.

Everything else in `ghosttrack_jax.lm` is written once against a `Family`: which Flax classes to use
(transformers' for GPT-2 and Llama, `lm.gemma3` for Gemma 3), where the blocks and embeddings sit in the params tree, and how logits are made from the
final-normed hidden state.

Importing this module also fixes transformers' FlaxLlama rotary table, which hard-codes a rope base of
10000 and ignores `config.rope_theta` (SmolLM2 needs 100000): the rotary module's `setup` is replaced by
one that reads the config, so every Llama config gets its own theta and configs with the default 10000
are unchanged (docs/environment.md section 3.4).
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig
from transformers.models.gpt2 import modeling_flax_gpt2 as mfg
from transformers.models.llama import modeling_flax_llama as mfl

from ghosttrack_jax.lm import gemma3


def sinusoidal_positions(num_pos: int, dim: int, theta: float) -> jnp.ndarray:
  """FlaxLlama's rotary table ([num_pos, 1, dim] as sin|cos halves) with a configurable base."""
  inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
  freqs = np.einsum("i,j->ij", np.arange(num_pos), inv_freq).astype("float32")
  emb = np.concatenate((freqs, freqs), axis=-1)
  out = np.concatenate((np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]), axis=-1)
  return jnp.array(out[:, :, :num_pos])


def _rope_setup(self):
  head_dim = self.config.hidden_size // self.config.num_attention_heads
  theta = float(getattr(self.config, "rope_theta", 10000.0) or 10000.0)
  self.sincos = sinusoidal_positions(self.config.max_position_embeddings, head_dim, theta)


# Applied once, at import: `setup` runs at apply time, so this must precede the first Llama forward.
mfl.FlaxLlamaRotaryEmbedding.setup = _rope_setup


@dataclasses.dataclass(frozen=True)
class Family:
  """The transformers Flax classes and params-tree paths of one architecture."""

  name: str
  config_cls: type
  lm_cls: type  # the HF FlaxPreTrainedModel with an LM head (from_pretrained, generate, params layout)
  body_cls: type  # the linen module without the LM head: embeddings, blocks, final norm
  block_cls: type  # one transformer block; its __call__ returns (hidden_states, ...)
  prefix: str  # params key of the body inside the LM params ("transformer" / "model")
  blocks_key: str  # attribute / params key of the block collection inside the body
  embed_key: str  # params key of the token embedding inside the body
  n_positions_attr: str  # config attribute holding the maximum sequence length
  # Extraction windows start with BOS (extract.corpus): the model's activations without it are off the
  # distribution its (BOS-prefixed) prompts see. Off for GPT-2 and Llama, whose stores predate the rule.
  window_bos: bool = False

  def n_layers(self, cfg) -> int:
    return int(cfg.num_hidden_layers)

  def n_positions(self, cfg) -> int:
    return int(getattr(cfg, self.n_positions_attr))

  def unembedding_is_tied(self, cfg, params) -> bool:
    """GPT-2 ties `lm_head` to `wte` when the config says so; FlaxLlama always has its own `lm_head`
    (the loader copies tied embeddings into it); Gemma 3 uses the embeddings unless it has one."""
    if self.name == "gpt2":
      return bool(cfg.tie_word_embeddings) or "lm_head" not in params
    return "lm_head" not in params

  def logits(self, cfg, params, hidden: jnp.ndarray) -> jnp.ndarray:
    """Final-normed hidden states [..., D] -> logits [..., V], exactly as the HF LM head computes them."""
    if self.unembedding_is_tied(cfg, params):
      emb = params[self.prefix][self.embed_key]["embedding"]  # [V, D]
      return jnp.einsum("...d,vd->...v", hidden, emb.astype(hidden.dtype))
    kernel = params["lm_head"]["kernel"]  # [D, V]
    return jnp.einsum("...d,dv->...v", hidden, kernel.astype(hidden.dtype))


GPT2 = Family(
  name="gpt2",
  config_cls=GPT2Config,
  lm_cls=mfg.FlaxGPT2LMHeadModel,
  body_cls=mfg.FlaxGPT2Module,
  block_cls=mfg.FlaxGPT2Block,
  prefix="transformer",
  blocks_key="h",
  embed_key="wte",
  n_positions_attr="n_positions",
)
LLAMA = Family(
  name="llama",
  config_cls=LlamaConfig,
  lm_cls=mfl.FlaxLlamaForCausalLM,
  body_cls=mfl.FlaxLlamaModule,
  block_cls=mfl.FlaxLlamaDecoderLayer,
  prefix="model",
  blocks_key="layers",
  embed_key="embed_tokens",
  n_positions_attr="max_position_embeddings",
)
GEMMA3 = Family(
  name="gemma3",
  config_cls=Gemma3TextConfig,
  lm_cls=gemma3.Gemma3ForCausalLM,
  body_cls=gemma3.Gemma3Module,
  block_cls=gemma3.Gemma3Block,
  prefix="model",
  blocks_key="layers",
  embed_key="embed_tokens",
  n_positions_attr="max_position_embeddings",
  window_bos=True,
)
FAMILIES = {"gpt2": GPT2, "llama": LLAMA, "gemma3": GEMMA3}


RANDOM_GEMMA3_WINDOW = 8  # tokens


def random_config(
  family: Family,
  *,
  n_layer: int,
  d_model: int,
  n_head: int,
  n_positions: int,
  vocab_size: int,
  bos_id: Any,
  eos_id: int,
  pad_id: int,
):
  """A randomly initialisable config of the given shape.

  For Llama the KV heads are halved when the head count is even, so grouped-query attention (as in
  SmolLM2) is exercised by the tiny test models too; Gemma 3 has one KV head, as the 270M model, and
  a sliding window of 8 tokens, so the tiny models' windows bind; the MLP is 4 x d_model wide.
  """
  if family.name == "gpt2":
    return GPT2Config(
      n_layer=n_layer,
      n_embd=d_model,
      n_head=n_head,
      n_positions=n_positions,
      vocab_size=vocab_size,
      bos_token_id=bos_id if bos_id is not None else eos_id,
      eos_token_id=eos_id,
      pad_token_id=pad_id,
    )
  if family.name == "gemma3":
    return Gemma3TextConfig(
      vocab_size=vocab_size,
      hidden_size=d_model,
      intermediate_size=4 * d_model,
      num_hidden_layers=n_layer,
      num_attention_heads=n_head,
      num_key_value_heads=1,
      head_dim=d_model // n_head,
      query_pre_attn_scalar=d_model // n_head,
      max_position_embeddings=n_positions,
      sliding_window=RANDOM_GEMMA3_WINDOW,
      bos_token_id=bos_id,
      eos_token_id=eos_id,
      pad_token_id=pad_id,
    )
  n_kv = n_head // 2 if n_head % 2 == 0 else n_head
  return LlamaConfig(
    vocab_size=vocab_size,
    hidden_size=d_model,
    intermediate_size=4 * d_model,
    num_hidden_layers=n_layer,
    num_attention_heads=n_head,
    num_key_value_heads=n_kv,
    max_position_embeddings=n_positions,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=bos_id,
    eos_token_id=eos_id,
    pad_token_id=pad_id,
  )
