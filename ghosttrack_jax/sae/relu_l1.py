"""Legacy ReLU + L1 SAE: the original GhostTrack formulation, kept as a comparison mode (docs/sae_recipes.md §4).

  pi = x W_enc + b_enc  (raw activations: no input scaling, no b_dec subtraction)
  f  = pi * 1[pi > theta]        one scalar theta for all latents, never trained
  L  = mean_{b,j} (x - x_hat)^2 + lambda * mean_{b,i} |f|    (element means)

The original called this "JumpReLU"; it has no threshold gradient. Decoder rows are renormalised every
100 steps without gradient projection, the encoder is untied, and the learning rate follows a per-epoch
cosine (all handled by the trainer, train/, from `Hyper.arch`). Exported as a JumpReLU with theta_i = theta.
"""

import jax
import jax.numpy as jnp

from ghosttrack_jax.sae import sparse
from ghosttrack_jax.sae.common import Hyper, Params

DECODER_RENORM_EVERY = 100  # steps


def coo_threshold(hyper: Hyper, params: Params, pre: jax.Array) -> jax.Array:
  del hyper, pre
  return jax.lax.stop_gradient(params["threshold"])


def encode(hyper: Hyper, params: Params, pre: jax.Array, state=None) -> jax.Array:
  del hyper, state
  return pre * (pre > params["threshold"])


def loss(hyper: Hyper, params: Params, x, pre, ctx, coo=None):
  """Per-layer legacy loss (see module docstring); `coo` selects the sparse path."""
  del ctx
  b, d = x.shape
  m = hyper.width
  theta = jax.lax.stop_gradient(params["threshold"])
  zeros_d = jnp.zeros((d,), x.dtype)
  if coo is None:
    p = sparse.dense_preact(x, zeros_d, params["W_enc"], params["b_enc"], pre)
    f = p * jax.lax.stop_gradient(p > theta)
    x_hat = f @ params["W_dec"] + params["b_dec"]
    fired = jnp.any(f != 0, axis=0)
    l0 = jnp.sum(f != 0) / b
  else:
    p = sparse.gather_preact(x, zeros_d, params["W_enc"], params["b_enc"], pre, coo)
    keep = jax.lax.stop_gradient(coo.valid() & (p > theta[coo.cols]))
    f = jnp.where(keep, p, 0.0)
    x_hat = sparse.decode(f, params["W_dec"], coo, b) + params["b_dec"]
    nz = (f != 0).astype(jnp.float32)
    fired = sparse.col_sum(coo, nz, m) > 0
    l0 = jnp.sum(nz) / b
  err = x - x_hat
  sq = jnp.sum(err * err)
  l1 = hyper.l1_coefficient * jnp.sum(jnp.abs(f)) / (b * m)
  total = sq / (b * d) + l1
  centred = x - jnp.mean(x, axis=0)
  aux = {
    "mse": sq / b,
    "fvu": sq / jnp.sum(centred * centred),
    "l0": l0,
    "sparsity_loss": l1,
    "fired": fired,
    "window_share": jnp.zeros((), jnp.float32),
    "theta_mean": jnp.mean(theta),
    "theta_min": jnp.min(theta),
    "theta_max": jnp.max(theta),
    "min_positive_code": jnp.asarray(jnp.inf, jnp.float32),
  }
  return total, aux
