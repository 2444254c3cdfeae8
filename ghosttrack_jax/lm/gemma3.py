"""Gemma 3 (text) in Flax linen, shaped like transformers' Flax models so `LanguageModel` drives it unchanged.

transformers 4.x has no Flax Gemma 3, so the architecture is written here against transformers'
`Gemma3TextConfig` (which needs no torch):

  - embeddings multiplied by sqrt(d_model); the output head is the embedding matrix (tied);
  - per block: x + post_attention_norm(attn(input_norm(x))), then
    x + post_feedforward_norm(mlp(pre_feedforward_norm(x)));
  - RMSNorm scales by (1 + weight), computed in float32 (Gemma's convention: a zero weight is identity);
  - attention: grouped-query (the KV heads shared by groups of query heads), queries and keys RMS-normed
    per head before the rotary embedding, scores scaled by query_pre_attn_scalar^-1/2;
  - `config.layer_types` marks each block "sliding_attention" (keys within `sliding_window` tokens of
    the query, rotary base `rope_local_base_freq`) or "full_attention" (rotary base `rope_theta`, with
    linear `rope_scaling` where the config has one);
  - MLP: down(gelu_tanh(gate(x)) * up(x)).

The module tree and its call signatures follow transformers' FlaxLlama, which `lm.model` and
`lm.generation` were written against: the body takes input_ids / attention_mask / position_ids /
init_cache and returns an output with `last_hidden_state` (final norm applied); blocks are
`Gemma3Block` modules named "0".."L-1" inside a collection named "layers", each returning a tuple whose
first element is its output; the KV cache is the "cache" collection with `cached_key`, `cached_value`
and `cache_index` per attention module, created by `init(..., init_cache=True)` and advanced by
`apply(..., mutable=["cache"])` with an attention mask over every cache slot.

Masks are built from slot indices (query slot = cache_index + t), never from a [max_positions]^2
table (32k positions would make that table 1 GiB). Real tokens are contiguous in the slots (left or right
padding only), so a slot distance is a token distance and the sliding window can be applied to slots.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from transformers import Gemma3TextConfig
from transformers.modeling_flax_outputs import FlaxBaseModelOutput

from ghosttrack_jax.errors import ModelLoadError

_MASKED = -1e30  # finite, so a query row with no visible key (left padding) gives no NaN


class RMSNorm(nn.Module):
  """Gemma's RMSNorm: x / rms(x) * (1 + weight), in float32."""

  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (1.0 + weight)).astype(self.dtype)


def rotary(x, positions, base: float, scale: float = 1.0):
  """Rotary embedding of x [B, T, heads, hd] at positions [B, T] (halves rotated, as in Gemma/NeoX)."""
  hd = x.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  angles = (positions.astype(jnp.float32) / scale)[..., None] * inv_freq  # [B, T, hd/2]
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def rope_settings(config, layer: int) -> tuple[float, float]:
  """(base, linear scale) of block `layer`'s rotary embedding."""
  if config.layer_types[layer] == "sliding_attention":
    return float(config.rope_local_base_freq), 1.0
  scaling = config.rope_scaling or {}
  return float(config.rope_theta), float(scaling.get("factor", 1.0) or 1.0)


class Gemma3Attention(nn.Module):
  config: Gemma3TextConfig
  layer: int
  dtype: jnp.dtype = jnp.float32

  def _dense(self, features, name):
    return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name=name)

  @nn.compact
  def __call__(self, x, attention_mask, position_ids, init_cache: bool = False):
    cfg = self.config
    b, t, _ = x.shape
    n_heads, n_kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = self._dense(n_heads * hd, "q_proj")(x).reshape(b, t, n_heads, hd)
    k = self._dense(n_kv * hd, "k_proj")(x).reshape(b, t, n_kv, hd)
    v = self._dense(n_kv * hd, "v_proj")(x).reshape(b, t, n_kv, hd)
    q = RMSNorm(cfg.rms_norm_eps, self.dtype, name="q_norm")(q)
    k = RMSNorm(cfg.rms_norm_eps, self.dtype, name="k_norm")(k)
    base, scale = rope_settings(cfg, self.layer)
    q, k = rotary(q, position_ids, base, scale), rotary(k, position_ids, base, scale)

    first_slot = jnp.int32(0)
    if self.has_variable("cache", "cached_key") or init_cache:
      k, v, first_slot = self._cache(k, v)
    q_slots = first_slot + jnp.arange(t)  # [T]
    k_slots = jnp.arange(k.shape[1])  # [S]
    allowed = k_slots[None, :] <= q_slots[:, None]
    if cfg.layer_types[self.layer] == "sliding_attention":
      allowed &= q_slots[:, None] - k_slots[None, :] < cfg.sliding_window
    allowed = allowed[None] & (attention_mask[:, None, :] > 0)  # [B, T, S]

    groups = n_heads // n_kv
    q = q.reshape(b, t, n_kv, groups, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32)
    scores = scores * float(cfg.query_pre_attn_scalar) ** -0.5
    if cfg.attn_logit_softcapping:
      cap = float(cfg.attn_logit_softcapping)
      scores = jnp.tanh(scores / cap) * cap
    scores = jnp.where(allowed[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, n_heads * hd)
    return self._dense(cfg.hidden_size, "o_proj")(out)

  def _cache(self, k, v):
    """Writes k/v at the cache index; returns the whole cache and the slot of the first new token.

    During `init(..., init_cache=True)` the variables are only created (shaped like this call's k/v)
    and the call attends over its own tokens, as transformers' Flax models do."""
    initialised = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialised:
      return k, v, jnp.int32(0)
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(
      cached_k.value, k.astype(cached_k.value.dtype), (0, start, 0, 0)
    )
    cached_v.value = jax.lax.dynamic_update_slice(
      cached_v.value, v.astype(cached_v.value.dtype), (0, start, 0, 0)
    )
    index.value = start + k.shape[1]
    return cached_k.value, cached_v.value, start


class Gemma3MLP(nn.Module):
  config: Gemma3TextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda f, n: nn.Dense(f, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name=n)  # noqa: E731
    inner = self.config.intermediate_size
    hidden = jax.nn.gelu(dense(inner, "gate_proj")(x), approximate=True) * dense(inner, "up_proj")(x)
    return dense(self.config.hidden_size, "down_proj")(hidden)


class Gemma3Block(nn.Module):
  """One decoder block; returns (output,) like transformers' Flax blocks (see `lm.model`)."""

  config: Gemma3TextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, position_ids, init_cache: bool = False):
    cfg = self.config
    norm = lambda n: RMSNorm(cfg.rms_norm_eps, self.dtype, name=n)  # noqa: E731
    attn = Gemma3Attention(cfg, int(self.name), self.dtype, name="self_attn")
    h = norm("input_layernorm")(x)
    x = x + norm("post_attention_layernorm")(attn(h, attention_mask, position_ids, init_cache))
    h = norm("pre_feedforward_layernorm")(x)
    x = x + norm("post_feedforward_layernorm")(Gemma3MLP(cfg, self.dtype, name="mlp")(h))
    return (x,)


class Gemma3Blocks(nn.Module):
  config: Gemma3TextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, position_ids, init_cache: bool = False):
    for i in range(self.config.num_hidden_layers):
      x = Gemma3Block(self.config, self.dtype, name=str(i))(x, attention_mask, position_ids, init_cache)[0]
    return x


class Gemma3Module(nn.Module):
  """The body: scaled embeddings, the blocks, the final norm (no output head; see `Family.logits`)."""

  config: Gemma3TextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    input_ids,
    attention_mask,
    position_ids,
    deterministic: bool = True,
    init_cache: bool = False,
  ):
    del deterministic  # no dropout at inference
    cfg = self.config
    embed = nn.Embed(
      cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="embed_tokens"
    )
    x = embed(input_ids) * jnp.asarray(math.sqrt(cfg.hidden_size), self.dtype)
    x = Gemma3Blocks(cfg, self.dtype, name="layers")(x, attention_mask, position_ids, init_cache)
    x = RMSNorm(cfg.rms_norm_eps, self.dtype, name="norm")(x)
    return FlaxBaseModelOutput(last_hidden_state=x)


def check_shapes(model_params: dict, cfg: Gemma3TextConfig, where: str):
  """ModelLoadError naming the first tensor of `model_params` (the body's params) that is missing or
  has the wrong shape for the model `cfg` describes; `where` names the file or folder read."""
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  want = jax.eval_shape(Gemma3Module(cfg).init, jax.random.PRNGKey(0), ids, ids, ids)["params"]
  got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(model_params)}
  for key, leaf in jax.tree_util.tree_leaves_with_path(want):
    name = jax.tree_util.keystr(key)
    if got.get(name) != leaf.shape:
      raise ModelLoadError(
        f"{where!r}: tensor {name} has shape {got.get(name)}, the config's model needs {leaf.shape}"
      )


class Gemma3ForCausalLM:
  """The little of transformers' `Flax*ForCausalLM` API that the loader uses for random weights:
  `Gemma3ForCausalLM(config, dtype=..., _do_init=False).init_weights(rng, (batch, length))` -> params
  {"model": ...} (no `lm_head`: the output head is the embedding matrix)."""

  def __init__(self, config: Gemma3TextConfig, dtype=jnp.float32, _do_init: bool = False):
    del _do_init
    self.config, self.module = config, Gemma3Module(config, dtype=dtype)

  def init_weights(self, rng, input_shape):
    ids = jnp.zeros(input_shape, jnp.int32)
    return {"model": self.module.init(rng, ids, jnp.ones_like(ids), ids)["params"]}
