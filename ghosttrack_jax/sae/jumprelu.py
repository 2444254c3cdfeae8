"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope): per-latent thresholds learned through a
straight-through estimator with a rectangle kernel, and an L0 penalty (docs/sae_recipes.md §2).

  f_i = pi_i * H(pi_i - theta_i),     L = ||x - x_hat||^2 + lambda_t * sum_i H(pi_i - theta_i)

Pseudo-derivatives (K = rectangle kernel 1[-1/2 < u < 1/2], eps = bandwidth):
  JumpReLU: d/dpi = H(pi - theta) (true derivative);  d/dtheta = -(theta/eps) K((pi - theta)/eps)
  H in L0:  d/dpi = 0;                               d/dtheta = -(1/eps) K((pi - theta)/eps)
The step in the L0 term takes pi, not f (dictionary_learning #55). theta is trained directly (not log
theta) and clipped at 0 after each update: a deliberate departure from the paper (SAELens PR #718).
"""

import functools

import jax
import jax.numpy as jnp

from ghosttrack_jax.sae import common, sparse
from ghosttrack_jax.sae.common import Hyper, Params


def _kernel(u):
  return ((u > -0.5) & (u < 0.5)).astype(jnp.float32)


# ---- dense: theta [M] broadcast over leading batch axes --------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre, theta, bandwidth):
  return pre * (pre > theta)


def _jumprelu_fwd(pre, theta, bandwidth):
  return pre * (pre > theta), (pre, theta)


def _jumprelu_bwd(bandwidth, res, g):
  pre, theta = res
  d_pre = g * (pre > theta)
  d_theta = g * (-theta / bandwidth) * _kernel((pre - theta) / bandwidth)
  return d_pre, jnp.sum(d_theta.reshape(-1, theta.shape[-1]), axis=0)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre, theta, bandwidth):
  """Heaviside H(pre - theta) with the STE pseudo-derivative for theta (none for pre)."""
  return (pre > theta).astype(pre.dtype)


def _step_fwd(pre, theta, bandwidth):
  return (pre > theta).astype(pre.dtype), (pre, theta)


def _step_bwd(bandwidth, res, g):
  pre, theta = res
  d_theta = g * (-1.0 / bandwidth) * _kernel((pre - theta) / bandwidth)
  return jnp.zeros_like(pre), jnp.sum(d_theta.reshape(-1, theta.shape[-1]), axis=0)


step.defvjp(_step_fwd, _step_bwd)


# ---- sparse: values at COO entries, theta gathered per entry ---------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def jumprelu_coo(vals, theta, coo, bandwidth):
  t = theta[coo.cols]
  return jnp.where(coo.valid(), vals * (vals > t), 0.0)


def _jumprelu_coo_fwd(vals, theta, coo, bandwidth):
  return jumprelu_coo(vals, theta, coo, bandwidth), (vals, theta, coo)


def _jumprelu_coo_bwd(bandwidth, res, g):
  vals, theta, coo = res
  t = theta[coo.cols]
  g = jnp.where(coo.valid(), g, 0.0)
  d_vals = g * (vals > t)
  d_theta = sparse.col_sum(coo, g * (-t / bandwidth) * _kernel((vals - t) / bandwidth), theta.shape[0])
  return d_vals, d_theta, None


jumprelu_coo.defvjp(_jumprelu_coo_fwd, _jumprelu_coo_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def step_coo(vals, theta, coo, bandwidth):
  """H(pi - theta) at the COO entries. Every entry where H or K can be non-zero (pi > theta - eps/2)
  is in the list, so sums over it equal the dense sums."""
  return jnp.where(coo.valid(), (vals > theta[coo.cols]).astype(jnp.float32), 0.0)


def _step_coo_fwd(vals, theta, coo, bandwidth):
  return step_coo(vals, theta, coo, bandwidth), (vals, theta, coo)


def _step_coo_bwd(bandwidth, res, g):
  vals, theta, coo = res
  t = theta[coo.cols]
  g = jnp.where(coo.valid(), g, 0.0)
  d_theta = sparse.col_sum(coo, g * (-1.0 / bandwidth) * _kernel((vals - t) / bandwidth), theta.shape[0])
  return jnp.zeros_like(vals), d_theta, None


step_coo.defvjp(_step_coo_fwd, _step_coo_bwd)


# ---- architecture interface ----------------------------------------------------------------------


def coo_threshold(hyper: Hyper, params: Params, pre: jax.Array) -> jax.Array:
  """Entries the sparse path needs: active ones and those in the lower half of the eps-window
  (inactive, but their theta gradient needs d f)."""
  del pre
  return params["threshold"] - 0.5 * hyper.bandwidth


def encode(hyper: Hyper, params: Params, pre: jax.Array, state=None) -> jax.Array:
  del hyper, state
  return pre * (pre > params["threshold"])


def loss(hyper: Hyper, params: Params, x, pre, ctx, coo=None):
  """Per-layer JumpReLU loss. x [B, D] scaled inputs; pre [B, M] precomputed pre-activations.

  Returns (loss, aux) where aux holds metrics; `coo` selects the sparse path.
  """
  b, _ = x.shape
  theta = params["threshold"]
  b_pre = params["b_dec"] if hyper.applies_b_dec_to_input else jnp.zeros((hyper.d_model,), x.dtype)
  if coo is None:
    p = sparse.dense_preact(x, b_pre, params["W_enc"], params["b_enc"], pre)
    f = jumprelu(p, theta, hyper.bandwidth)
    x_hat = f @ params["W_dec"] + params["b_dec"]
    active = f > 0
    fired = jnp.any(active, axis=0)
    l0 = jnp.sum(active) / b
  else:
    p = sparse.gather_preact(x, b_pre, params["W_enc"], params["b_enc"], pre, coo)
    f = jumprelu_coo(p, theta, coo, hyper.bandwidth)
    x_hat = sparse.decode(f, params["W_dec"], coo, b) + params["b_dec"]
    active = (f > 0).astype(jnp.float32)
    fired = sparse.col_sum(coo, active, hyper.width) > 0
    l0 = jnp.sum(active) / b
  err = x - x_hat
  sq = jnp.sum(err * err)
  mse = sq / b
  w = common.row_weights(hyper, x)
  objective = mse if w is None else jnp.sum(w * jnp.sum(err * err, axis=-1)) / b  # outliers down-weighted
  if coo is None:
    pre_sg = jax.lax.stop_gradient(pre)
    l0_surrogate = jnp.sum(step(pre_sg, theta, hyper.bandwidth)) / b
    window = jnp.mean(jnp.abs(pre_sg - theta) < 0.5 * hyper.bandwidth)
  else:  # O(N): only listed entries can contribute (see step_coo)
    v = jax.lax.stop_gradient(p)
    l0_surrogate = jnp.sum(step_coo(v, theta, coo, hyper.bandwidth)) / b
    in_window = coo.valid() & (jnp.abs(v - theta[coo.cols]) < 0.5 * hyper.bandwidth)
    window = jnp.sum(in_window) / (b * hyper.width)
  sparsity = ctx["lam"] * l0_surrogate
  total = objective + sparsity
  centred = x - jnp.mean(x, axis=0)
  aux = {
    "mse": mse,
    "fvu": sq / jnp.sum(centred * centred),
    "l0": l0,
    "sparsity_loss": sparsity,
    "fired": fired,
    "window_share": window,
    "theta_mean": jnp.mean(theta),
    "theta_min": jnp.min(theta),
    "theta_max": jnp.max(theta),
    "min_positive_code": jnp.asarray(jnp.inf, jnp.float32),
  }
  return total, aux
