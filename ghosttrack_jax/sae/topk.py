"""TopK SAE (Gao et al. 2024) with the AuxK loss (docs/sae_recipes.md §3).

  pi = (x - b_dec) W_enc + b_enc
  f = TopK_k(ReLU(pi)) per token
  L = sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2 + alpha * L_aux
  (with sae.outlier_norm_ratio > 0 every sum is weighted by common.row_weights, the mean too)

AuxK: with e = stop_gradient(x - x_hat) and the dead set D, z_aux keeps the k_aux largest ReLU'd
pre-activations among dead latents (static k_aux from a top-k, non-dead picks zeroed),
e_hat = z_aux W_dec (no bias), L_aux = sum ||e - e_hat||^2 / sum ||x - mean(x)||^2; 0 when D is empty.
Recipe (sparsify): Adam(0.9, 0.999, 6.25e-10), peak lr 2e-4 / sqrt(width / 2^14).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ghosttrack_jax.sae import common, sparse
from ghosttrack_jax.sae.common import SAE_DEFAULTS, Params


@dataclasses.dataclass(frozen=True)
class TopK(common.Architecture):
  name = "topk"
  export_arch = "topk"
  adam_eps = 6.25e-10

  k: int = SAE_DEFAULTS.k  # active latents per token
  aux_k_coefficient: float = SAE_DEFAULTS.aux_k_coefficient  # AuxK alpha
  aux_k: int = SAE_DEFAULTS.aux_k  # AuxK k_aux; 0 = d_model // 2

  @property
  def applies_b_dec_to_input(self) -> bool:
    return True  # Gao et al.

  @property
  def b_dec_from_data(self) -> bool:
    return True  # the first batch's mean for the geometric median (docs/sae_recipes.md §3.1)

  @property
  def entries_per_token(self) -> int | None:
    return self.k

  @property
  def uses_aux_k(self) -> bool:
    return self.aux_k_coefficient > 0

  @property
  def k_aux(self) -> int:
    return self.aux_k or max(1, self.d_model // 2)

  @property
  def aux_k_entries(self) -> int:
    return self.k_aux

  def recipe_lr(self) -> float | None:
    return 2e-4 / math.sqrt(self.width / 2**14)

  def encode(self, params: Params, pre: jax.Array) -> jax.Array:
    top = sparse.coo_topk(pre, self.k)  # lax.top_k's selection (the C++ kernel on CPU, 4x faster)
    return jnp.zeros_like(pre).at[top.rows, top.cols].set(jnp.maximum(pre[top.rows, top.cols], 0.0))

  def inference_params(self, params: dict, batch_threshold) -> dict:
    del batch_threshold
    return {**params, "threshold": np.zeros_like(params["threshold"])}  # selection by rank, no threshold

  def saelens_fields(self) -> dict:
    return {"k": self.k, "rescale_acts_by_decoder_norm": False}

  def entries(self, params, pre, thr, coo, use_sparse):
    del params, thr, coo
    return (sparse.Coo if use_sparse else sparse.Dense).top_k(pre, self.k)

  def activation(self, params, p, entries, ctx):
    return entries.keep(jnp.maximum(p, 0.0))

  def objective(self, rec, b):
    return rec.weighted_sq / rec.weighted_var  # the FVU (weighted: outlier rows down-weighted)

  def sparsity(self, params, x, pre, p, f, entries, rec, ctx):
    """The AuxK term (alpha * L_aux) when ctx["use_aux"] (static) is set."""
    if not ctx["use_aux"]:
      return jnp.zeros((), jnp.float32), {}
    dead = ctx["dead"]
    masked = jnp.where(dead, lax.stop_gradient(sparse.as_dense(pre)), -jnp.inf)
    aux_entries = entries.top_k(masked, min(self.k_aux, self.width))
    p_aux = aux_entries.preact(x, params["b_dec"], params["W_enc"], params["b_enc"], pre, dense_p=p)
    z = aux_entries.keep(jnp.where(aux_entries.per_latent(dead), jnp.maximum(p_aux, 0.0), 0.0))
    e_hat = aux_entries.decode(z, params["W_dec"], x.shape[0])
    r = lax.stop_gradient(rec.err) - e_hat
    r_sq = jnp.sum(r * r, axis=-1)
    if rec.weights is not None:
      r_sq = rec.weights * r_sq
    aux_loss = jnp.where(jnp.any(dead), jnp.sum(r_sq) / rec.weighted_var, 0.0)
    return self.aux_k_coefficient * aux_loss, {}
