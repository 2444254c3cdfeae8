"""Legacy ReLU + L1 SAE: the original GhostTrack formulation, kept as a comparison mode (docs/sae_recipes.md §4).

  pi = x W_enc + b_enc  (raw activations: no input scaling, no b_dec subtraction)
  f  = pi * 1[pi > theta]        one scalar theta for all latents, never trained
  L  = mean_{b,j} (x - x_hat)^2 + lambda * mean_{b,i} |f|    (element means)

The original called this "JumpReLU"; it has no threshold gradient. Recipe: PyTorch `Linear` initialisation
(untied encoder), lr 1e-4 annealed per epoch by a cosine, no gradient projection, decoder rows
renormalised every 100 steps. Exported as a JumpReLU with theta_i = theta.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from ghosttrack_jax.sae import common
from ghosttrack_jax.sae.common import SAE_DEFAULTS, Params

DECODER_RENORM_EVERY = 100  # steps


@dataclasses.dataclass(frozen=True)
class ReluL1(common.Architecture):
  name = "relu_l1"
  export_arch = "jumprelu"
  projects_decoder_grads = False
  renormalise_every = DECODER_RENORM_EVERY
  cosine_per_epoch = True
  scales_inputs = False

  l1_coefficient: float = SAE_DEFAULTS.l1_coefficient  # lambda (element means)
  legacy_threshold: float = SAE_DEFAULTS.legacy_threshold  # the fixed theta (raw units)

  @classmethod
  def config_problems(cls, sae_config) -> list[str]:
    out = []  # the legacy mode reproduces the original's init and loss
    if sae_config.outlier_norm_ratio != 0:
      out.append(
        "config.sae.outlier_norm_ratio must be 0 with config.sae.arch='relu_l1' (the original's loss)"
      )
    if sae_config.encoder_init_scale != 1:
      out.append("config.sae.encoder_init_scale must be 1 with config.sae.arch='relu_l1' (untied init)")
    return out

  def recipe_lr(self) -> float | None:
    return 1e-4

  def initial_threshold(self) -> float:
    return self.legacy_threshold

  def param_initialisers(self):
    """PyTorch `Linear` defaults (U(+-1/sqrt(fan_in)) for weights and biases), untied encoder, unit
    decoder rows (docs/sae_recipes.md §4)."""
    d, m = self.d_model, self.width
    enc, dec = common.legacy_uniform(1 / math.sqrt(d)), common.legacy_uniform(1 / math.sqrt(m))
    return [
      ("W_dec", lambda k, made: common.renormalise_decoder({"W_dec": dec(k, (m, d))})["W_dec"]),
      ("W_enc", lambda k, made: enc(k, (d, m))),
      ("b_enc", lambda k, made: enc(k, (m,))),
      ("b_dec", lambda k, made: dec(k, (d,))),
      ("threshold", lambda k, made: jnp.full((m,), self.initial_threshold(), jnp.float32)),
    ]

  def encode(self, params: Params, pre: jax.Array) -> jax.Array:
    return pre * (pre > params["threshold"])

  def selection_threshold(self, params: Params, pre: jax.Array) -> jax.Array:
    del pre
    return jax.lax.stop_gradient(params["threshold"])

  def activation(self, params, p, entries, ctx):
    theta = entries.per_latent(jax.lax.stop_gradient(params["threshold"]))
    return entries.keep(p * jax.lax.stop_gradient(p > theta))

  def objective(self, rec, b):
    return rec.sq / (b * self.d_model)

  def sparsity(self, params, x, pre, p, f, entries, rec, ctx):
    return self.l1_coefficient * jnp.sum(jnp.abs(f)) / (x.shape[0] * self.width), {}
