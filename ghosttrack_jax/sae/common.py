"""Shared SAE machinery: hyper-parameters, the Flax parameter module, initialisation, decoder constraint.

Storage layout (the same as SAELens and Gemma Scope, so exports need no transposes), per layer:
  W_enc [d_model, d_sae], b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model], threshold [d_sae].
Every function here is written for ONE layer; the trainer `vmap`s it over a leading `layer` axis.
Inputs are in scaled units (`s * x`, with `E||s x||^2 = 1`), except for the legacy mode, which trains on
raw activations like the original GhostTrack (its input scale is 1).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ghosttrack_jax import config_lib

Params = dict[str, jax.Array]
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


_SAE = config_lib.base_config().sae


@dataclasses.dataclass(frozen=True)
class Hyper:
  """Static (hashable) hyper-parameters of one SAE family; built once from the config."""

  arch: str  # jumprelu | topk | batchtopk | relu_l1
  d_model: int  # input width D
  width: int  # latents M
  # The defaults are config_lib.base_config()'s (one place for them); `hyper_from_config` passes every
  # field, so they only serve Hypers built directly (tests, benchmarks).
  k: int = _SAE.k  # topk/batchtopk: active latents per token
  l0_coefficient: float = _SAE.l0_coefficient  # jumprelu lambda
  l0_warmup_steps: int = _SAE.l0_warmup_steps  # steps
  bandwidth: float = _SAE.bandwidth  # jumprelu epsilon (scaled units)
  threshold_init: float = _SAE.threshold_init  # jumprelu theta_0 (scaled units)
  l1_coefficient: float = _SAE.l1_coefficient  # relu_l1 lambda (element means)
  legacy_threshold: float = _SAE.legacy_threshold  # relu_l1 fixed theta (raw units)
  aux_k_coefficient: float = _SAE.aux_k_coefficient  # AuxK alpha
  aux_k: int = _SAE.aux_k  # AuxK k_aux; 0 = d_model // 2
  dead_tokens: int = _SAE.dead_tokens  # tokens without firing after which a latent is dead
  batchtopk_threshold_start: int = _SAE.batchtopk_threshold_start  # step seeding the inference threshold
  batchtopk_threshold_beta: float = _SAE.batchtopk_threshold_beta  # EMA factor of the inference threshold
  # COO slots per token (flat over the batch). Not the config's default on purpose: 0 is the dense
  # path, the reference every sparse-path test compares with; the trainer sets it from the config.
  sparse_capacity: int = 0
  b_dec_init: str = _SAE.b_dec_init  # jumprelu: "zeros" (Gemma Scope) or "mean" (of the first batch)
  threshold_init_l0: int = _SAE.threshold_init_l0  # jumprelu: >0 sets theta_i from the first batch
  b_dec_to_input: bool = _SAE.b_dec_to_input  # jumprelu: encode x - b_dec (SAELens option)
  encoder_init_scale: float = _SAE.encoder_init_scale  # tied init: W_enc = this * W_dec^T
  outlier_norm_ratio: float = (
    _SAE.outlier_norm_ratio
  )  # > 0: rows above this x the batch median norm down-weighted

  @property
  def k_aux(self) -> int:
    return self.aux_k or max(1, self.d_model // 2)

  @property
  def dead_cap(self) -> int:
    """Saturation value of the int32 dead counters (just above the dead window, never overflows)."""
    return int(min(self.dead_tokens + 1, 2**31 - 2**24))

  @property
  def applies_b_dec_to_input(self) -> bool:
    """TopK/BatchTopK encode `x - b_dec` (Gao et al.); JumpReLU only with b_dec_to_input (Gemma Scope
    does not); legacy never."""
    return self.arch in ("topk", "batchtopk") or (self.arch == "jumprelu" and self.b_dec_to_input)

  @property
  def b_dec_from_data(self) -> bool:
    """b_dec starts at the first training batch's mean (scaled units): always for TopK/BatchTopK
    (docs/sae_recipes.md §3.1 allow the mean for the geometric median), for JumpReLU when b_dec_init="mean"."""
    return self.arch in ("topk", "batchtopk") or (self.arch == "jumprelu" and self.b_dec_init == "mean")

  @property
  def trains_threshold(self) -> bool:
    return self.arch == "jumprelu"

  @property
  def scales_inputs(self) -> bool:
    """Legacy mode reproduces the original, which trained on raw activations."""
    return self.arch != "relu_l1"


def hyper_from_config(config, d_model: int) -> Hyper:
  s, t = config.sae, config.sae_training
  # "auto" keeps the capacity here; train.step.for_platform turns it off where the step runs dense.
  capacity = int(t.sparse_capacity) if t.backward != "dense" else 0
  return Hyper(
    arch=s.arch,
    d_model=int(d_model),
    width=int(s.width),
    k=int(s.k),
    l0_coefficient=float(s.l0_coefficient),
    l0_warmup_steps=int(s.l0_warmup_steps),
    bandwidth=float(s.bandwidth),
    threshold_init=float(s.threshold_init),
    l1_coefficient=float(s.l1_coefficient),
    legacy_threshold=float(s.legacy_threshold),
    aux_k_coefficient=float(s.aux_k_coefficient),
    aux_k=int(s.aux_k),
    dead_tokens=int(s.dead_tokens),
    batchtopk_threshold_start=int(s.batchtopk_threshold_start),
    batchtopk_threshold_beta=float(s.batchtopk_threshold_beta),
    sparse_capacity=capacity,
    b_dec_init=str(s.b_dec_init),
    threshold_init_l0=int(s.threshold_init_l0),
    b_dec_to_input=bool(s.b_dec_to_input),
    encoder_init_scale=float(s.encoder_init_scale),
    outlier_norm_ratio=float(s.outlier_norm_ratio),
  )


# ---- parameters: a Flax module applied functionally ---------------------------------------------


def _unit_rows(w: jax.Array) -> jax.Array:
  return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


class SparseAutoencoder(nn.Module):
  """Owns one layer's SAE parameters and the dense encode/decode; the losses live in the arch modules.

  Tied initialisation (JumpReLU, TopK, BatchTopK; docs/sae_recipes.md §1.3): W_dec Kaiming-uniform with unit rows,
  W_enc = encoder_init_scale * W_dec^T, zero biases. Legacy initialisation (docs/sae_recipes.md §4): PyTorch `Linear` defaults
  (U(+-1/sqrt(fan_in)) for weights and biases), untied encoder, unit decoder rows.
  """

  hyper: Hyper

  def setup(self):
    h = self.hyper
    d, m = h.d_model, h.width
    legacy = h.arch == "relu_l1"

    def dec_init(key, shape):
      if legacy:
        w = jax.random.uniform(key, shape, jnp.float32, -1 / math.sqrt(m), 1 / math.sqrt(m))
      else:  # Kaiming-uniform (the scale is irrelevant: rows are normalised next)
        w = nn.initializers.kaiming_uniform()(key, shape, jnp.float32)
      return _unit_rows(w)

    self.W_dec = self.param("W_dec", dec_init, (m, d))
    if legacy:
      bound = 1 / math.sqrt(d)
      self.W_enc = self.param(
        "W_enc", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound), (d, m)
      )
      self.b_enc = self.param(
        "b_enc", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound), (m,)
      )
      bound_dec = 1 / math.sqrt(m)
      self.b_dec = self.param(
        "b_dec", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound_dec, bound_dec), (d,)
      )
      theta0 = h.legacy_threshold
    else:
      # A small tied encoder (encoder_init_scale < 1) starts with small codes, so the first steps do
      # not overshoot: measured in benchmarks/sae_quality.py (benchmarks/RESULTS.md).
      self.W_enc = self.param("W_enc", lambda k: h.encoder_init_scale * self.W_dec.T)
      self.b_enc = self.param("b_enc", nn.initializers.zeros, (m,), jnp.float32)
      self.b_dec = self.param("b_dec", nn.initializers.zeros, (d,), jnp.float32)
      theta0 = h.threshold_init if h.arch == "jumprelu" else 0.0
    self.threshold = self.param("threshold", nn.initializers.constant(theta0), (m,), jnp.float32)

  def preact(self, x: jax.Array) -> jax.Array:
    """[N, D] (scaled) -> [N, M] pre-activations."""
    if self.hyper.applies_b_dec_to_input:
      x = x - self.b_dec
    return x @ self.W_enc + self.b_enc

  def decode(self, f: jax.Array) -> jax.Array:
    """[N, M] codes -> [N, D] reconstruction (scaled units)."""
    return f @ self.W_dec + self.b_dec

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.preact(x)


def row_weights(hyper: Hyper, x: jax.Array) -> jax.Array | None:
  """Per-row weights [B] of the reconstruction loss, or None (hyper.outlier_norm_ratio = 0: all 1).

  Residual streams have rare massive-activation rows (norm ~100x the median): one such row can carry
  most of a batch's squared error, so the SAE spends its capacity on them. A row whose norm exceeds
  c = outlier_norm_ratio x the batch's median norm gets weight (c / ||x||)^2: its error counts as much
  as that of a row at the cap would, relative to its norm. No gradient flows through the weights.
  """
  if hyper.outlier_norm_ratio <= 0:
    return None
  norms = jnp.linalg.norm(x, axis=-1)
  cap = hyper.outlier_norm_ratio * jnp.median(norms)
  w = jnp.minimum(1.0, jnp.square(cap / jnp.maximum(norms, 1e-12)))
  return jax.lax.stop_gradient(w)


def data_thresholds(pre: jax.Array, l0: int) -> jax.Array:
  """Per-latent thresholds at the (1 - l0/M) quantile of each latent's pre-activations [B, M]: every
  latent fires on the same share of the batch and the mean L0 is about `l0` (never below 0)."""
  m = pre.shape[-1]
  q = 1.0 - min(max(l0, 1), m) / m
  return jnp.maximum(jnp.quantile(pre, q, axis=0), 0.0)


def init_params(key: jax.Array, hyper: Hyper) -> Params:
  """One layer's parameters (fp32). vmap over keys for a stack."""
  variables = SparseAutoencoder(hyper).init(key, jnp.zeros((1, hyper.d_model), jnp.float32))
  return {name: variables["params"][name] for name in PARAM_NAMES}


def apply_method(hyper: Hyper, params: Params, method: str, *args) -> jax.Array:
  """Applies a method of the Flax module to plain params (functional use, vmappable)."""
  module = SparseAutoencoder(hyper)
  return module.apply({"params": params}, *args, method=getattr(SparseAutoencoder, method))


def preact(hyper: Hyper, params: Params, x: jax.Array) -> jax.Array:
  return apply_method(hyper, params, "preact", x)


def decode_dense(hyper: Hyper, params: Params, f: jax.Array) -> jax.Array:
  return apply_method(hyper, params, "decode", f)


# ---- decoder constraint (docs/sae_recipes.md §1.2) -------------------------------------------------------------


def project_decoder_grads() -> optax.GradientTransformation:
  """First in the chain: removes from each W_dec row's gradient its component along the row."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params):
    w = params["W_dec"]
    g = updates["W_dec"]
    g = g - jnp.sum(g * w, axis=-1, keepdims=True) * w
    return {**updates, "W_dec": g}, state

  return optax.GradientTransformation(init_fn, update_fn)


def renormalise_decoder(params: Params) -> Params:
  return {**params, "W_dec": _unit_rows(params["W_dec"])}


def input_scale(mean_sq_norm: Any) -> Any:
  """s = 1/sqrt(E||x||^2), so that E||s x||^2 = 1 (docs/sae_recipes.md §1.1)."""
  return 1.0 / jnp.sqrt(jnp.maximum(jnp.asarray(mean_sq_norm, jnp.float32), 1e-12))


def fold_input_scale(params: Params, scale, hyper: Hyper) -> Params:
  """Export form (docs/sae_recipes.md §1.1): W_enc*s, W_dec/s, b_dec/s; b_enc and theta unchanged.

  Works on one layer or a stack (scale [L] broadcast over the trailing axes).
  """
  s = jnp.asarray(scale, jnp.float32)
  s2 = s.reshape(s.shape + (1, 1))
  s1 = s.reshape(s.shape + (1,))
  del hyper
  return {
    "W_enc": params["W_enc"] * s2,
    "b_enc": params["b_enc"],
    "W_dec": params["W_dec"] / s2,
    "b_dec": params["b_dec"] / s1,
    "threshold": params["threshold"],
  }
