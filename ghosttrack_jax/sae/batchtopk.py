"""BatchTopK SAE (Bussmann et al. 2024): TopK's loss and AuxK, but the B*k largest entries of ReLU(pi)
over the whole [B, M] batch are kept, not k per token (docs/sae_recipes.md §3).

The selection is exact: the B*k-th largest value is found by a radix select on the float bit pattern
(C++ kernel) or by bisection on it (32 counting passes, the XLA path, which would extend to a
data-sharded batch with one psum per pass).
At inference BatchTopK is a JumpReLU with theta_i = theta_glob (an EMA of the batch's smallest kept
activation, kept in the train state), as in SAELens and dictionary_learning; it is exported so.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ghosttrack_jax.sae import sparse, topk
from ghosttrack_jax.sae.common import SAE_DEFAULTS, Params


def batch_threshold_bits(r: jax.Array, k_total: int) -> jax.Array:
  """Bit pattern (int32) of the k_total-th largest entry of r >= 0 (0 if fewer are positive)."""
  return sparse.kth_largest_bits(r, k_total)


@dataclasses.dataclass(frozen=True)
class BatchTopK(topk.TopK):
  name = "batchtopk"
  export_arch = "jumprelu"

  batchtopk_threshold_start: int = SAE_DEFAULTS.batchtopk_threshold_start  # step seeding theta_glob
  batchtopk_threshold_beta: float = SAE_DEFAULTS.batchtopk_threshold_beta  # EMA factor of theta_glob

  @property
  def entries_per_token(self) -> int | None:
    return None  # B*k per batch, a varying number per token

  def encode(self, params: Params, pre: jax.Array) -> jax.Array:
    return pre * (pre > params["threshold"])

  def inference_params(self, params: dict, batch_threshold) -> dict:
    bt = np.asarray(batch_threshold, np.float32)
    bt = np.where(bt < 0, 0.0, bt)  # never seeded (run shorter than the start step): plain ReLU
    return {**params, "threshold": np.broadcast_to(bt[:, None], params["threshold"].shape).copy()}

  def saelens_fields(self) -> dict:
    return {}

  def selection_threshold(self, params: Params, pre: jax.Array) -> jax.Array:
    """The strict per-latent threshold [M] whose `pre > thr` entries are the kept ones."""
    del params
    pre = sparse.as_dense(pre)
    r = jnp.maximum(lax.stop_gradient(pre), 0.0)
    t_bits = batch_threshold_bits(r, pre.shape[0] * self.k)
    strict = lax.bitcast_convert_type(jnp.maximum(t_bits - 1, 0), jnp.float32)
    return jnp.full((pre.shape[1],), strict, jnp.float32)

  def entries(self, params, pre, thr, coo, use_sparse):
    del params
    return coo if use_sparse else sparse.Dense(lax.stop_gradient(sparse.as_dense(pre)) > thr)

  def update_batch_threshold(self, bt, step, aux):
    mp = aux["min_positive_code"]
    beta = self.batchtopk_threshold_beta
    seeded = jnp.where(bt < 0, mp, beta * bt + (1 - beta) * mp)
    return jnp.where((step >= self.batchtopk_threshold_start) & jnp.isfinite(mp), seeded, bt)
