"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs with the AuxK loss (docs/sae_recipes.md §3).

  pi = (x - b_dec) W_enc + b_enc
  TopK:      f = TopK_k(ReLU(pi)) per token
  BatchTopK: keep the B*k largest entries of ReLU(pi) over the whole [B, M] batch
  L = sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2 + alpha * L_aux
  (with sae.outlier_norm_ratio > 0 every sum is weighted by common.row_weights, the mean too)

AuxK: with e = stop_gradient(x - x_hat) and the dead set D, z_aux keeps the k_aux largest ReLU'd
pre-activations among dead latents (static k_aux from `lax.top_k`, non-dead picks zeroed),
e_hat = z_aux W_dec (no bias), L_aux = sum ||e - e_hat||^2 / sum ||x - mean(x)||^2; 0 when D is empty.

BatchTopK's selection is exact: the B*k-th largest value is found by a radix select on the float bit
pattern (C++ kernel) or by bisection on it (32 counting passes, the XLA path, which would extend to a
data-sharded batch with one psum per pass).
At inference BatchTopK is a JumpReLU with theta_i = theta_glob (an EMA of the batch's smallest kept
activation), as in SAELens and dictionary_learning.
"""

import jax
import jax.numpy as jnp
from jax import lax

from ghosttrack_jax.sae import common, sparse
from ghosttrack_jax.sae.common import Hyper, Params


def batch_threshold_bits(r: jax.Array, k_total: int) -> jax.Array:
  """Bit pattern (int32) of the k_total-th largest entry of r >= 0 (0 if fewer are positive)."""
  return sparse.kth_largest_bits(r, k_total)


def selection_threshold(hyper: Hyper, pre: jax.Array) -> jax.Array:
  """BatchTopK: the strict per-latent threshold [M] whose `pre > thr` entries are the kept ones."""
  r = jnp.maximum(lax.stop_gradient(pre), 0.0)
  t_bits = batch_threshold_bits(r, pre.shape[0] * hyper.k)
  strict = lax.bitcast_convert_type(jnp.maximum(t_bits - 1, 0), jnp.float32)
  return jnp.full((pre.shape[1],), strict, jnp.float32)


def coo_threshold(hyper: Hyper, params: Params, pre: jax.Array) -> jax.Array:
  del params
  return selection_threshold(hyper, pre)


def encode(hyper: Hyper, params: Params, pre: jax.Array, state=None) -> jax.Array:
  """Inference codes: TopK per token; BatchTopK as JumpReLU with theta = params['threshold']."""
  if hyper.arch == "batchtopk":
    return pre * (pre > params["threshold"])
  vals, idx = lax.top_k(pre, hyper.k)
  rows = jnp.arange(pre.shape[0])[:, None]
  return jnp.zeros_like(pre).at[rows, idx].set(jnp.maximum(vals, 0.0))


def _dense_mask_topk(pre, k):
  _, idx = lax.top_k(lax.stop_gradient(pre), k)
  rows = jnp.arange(pre.shape[0])[:, None]
  return jnp.zeros(pre.shape, bool).at[rows, idx].set(True)


def loss(hyper: Hyper, params: Params, x, pre, ctx, coo=None):
  """Per-layer TopK/BatchTopK loss with AuxK when ctx['use_aux'] (static) is set."""
  b, _ = x.shape
  m = hyper.width
  w_enc, b_enc, w_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
  if coo is None:
    p = sparse.dense_preact(x, b_dec, w_enc, b_enc, pre)
    if hyper.arch == "topk":
      mask = _dense_mask_topk(pre, hyper.k)
    else:
      thr = ctx.get("threshold")
      mask = lax.stop_gradient(pre) > (selection_threshold(hyper, pre) if thr is None else thr)
    f = jnp.where(mask, jnp.maximum(p, 0.0), 0.0)
    x_hat = f @ w_dec + b_dec
    fired = jnp.any(f > 0, axis=0)
    l0 = jnp.sum(f > 0) / b
    min_pos = jnp.min(jnp.where(f > 0, f, jnp.inf))
  else:
    p = sparse.gather_preact(x, b_dec, w_enc, b_enc, pre, coo)
    f = jnp.where(coo.valid(), jnp.maximum(p, 0.0), 0.0)
    x_hat = sparse.decode(f, w_dec, coo, b) + b_dec
    pos = (f > 0).astype(jnp.float32)
    fired = sparse.col_sum(coo, pos, m) > 0
    l0 = jnp.sum(pos) / b
    min_pos = jnp.min(jnp.where(f > 0, f, jnp.inf))
  err = x - x_hat
  sq = jnp.sum(err * err)
  centred = x - jnp.mean(x, axis=0)
  denom = jnp.sum(centred * centred)
  fvu = sq / denom
  w = common.row_weights(hyper, x)
  if w is None:
    objective, obj_denom = fvu, denom
  else:  # outlier rows down-weighted (common.row_weights); the same weights in the AuxK term
    w_mean = jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w)
    obj_denom = jnp.sum(w * jnp.sum(jnp.square(x - w_mean), axis=-1))
    objective = jnp.sum(w * jnp.sum(err * err, axis=-1)) / obj_denom
  aux_loss = jnp.zeros((), jnp.float32)
  if ctx["use_aux"]:
    dead = ctx["dead"]
    k_aux = min(hyper.k_aux, m)
    masked = jnp.where(dead, lax.stop_gradient(pre), -jnp.inf)
    e = lax.stop_gradient(err)
    if coo is None:
      _, idx = lax.top_k(masked, k_aux)
      rows = jnp.arange(b)[:, None]
      sel = jnp.zeros(pre.shape, bool).at[rows, idx].set(True) & dead
      z = jnp.where(sel, jnp.maximum(p, 0.0), 0.0)
      e_hat = z @ w_dec
    else:
      coo_aux = sparse.coo_topk(masked, k_aux)
      p_aux = sparse.gather_preact(x, b_dec, w_enc, b_enc, pre, coo_aux)
      z = jnp.where(dead[coo_aux.cols], jnp.maximum(p_aux, 0.0), 0.0)
      e_hat = sparse.decode(z, w_dec, coo_aux, b)
    r = e - e_hat
    r_sq = jnp.sum(r * r, axis=-1)
    if w is not None:
      r_sq = w * r_sq
    aux_loss = jnp.where(jnp.any(dead), jnp.sum(r_sq) / obj_denom, 0.0)
  total = objective + hyper.aux_k_coefficient * aux_loss
  aux = {
    "mse": sq / b,
    "fvu": fvu,
    "l0": l0,
    "sparsity_loss": hyper.aux_k_coefficient * aux_loss,
    "fired": fired,
    "window_share": jnp.zeros((), jnp.float32),
    "theta_mean": jnp.mean(params["threshold"]),
    "theta_min": jnp.min(params["threshold"]),
    "theta_max": jnp.max(params["threshold"]),
    "min_positive_code": min_pos,
  }
  return total, aux
