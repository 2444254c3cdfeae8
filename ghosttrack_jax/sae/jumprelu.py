"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope): per-latent thresholds learned through a
straight-through estimator with a rectangle kernel, and an L0 penalty (docs/sae_recipes.md §2).

  f_i = pi_i * H(pi_i - theta_i),     L = ||x - x_hat||^2 + lambda_t * sum_i H(pi_i - theta_i)

Pseudo-derivatives (K = rectangle kernel 1[-1/2 < u < 1/2], eps = bandwidth):
  JumpReLU: d/dpi = H(pi - theta) (true derivative);  d/dtheta = -(theta/eps) K((pi - theta)/eps)
  H in L0:  d/dpi = 0;                               d/dtheta = -(1/eps) K((pi - theta)/eps)
The step in the L0 term takes pi, not f (dictionary_learning #55). theta is trained directly (not log
theta) and clipped at 0 after each update: a deliberate departure from the paper (SAELens PR #718).
Recipe: Adam without momentum (b1 = 0); lambda warms up linearly over l0_warmup_steps.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ghosttrack_jax.sae import common
from ghosttrack_jax.sae.common import SAE_DEFAULTS, Params


def _kernel(u):
  return ((u > -0.5) & (u < 0.5)).astype(jnp.float32)


# The two STE functions take the entries (sparse.Dense or sparse.Coo) the values live at: theta [M] is
# read per entry (`per_latent`) and its pseudo-gradient summed per latent (`latent_sum`), so one
# definition serves the dense [B, M] values and the sparse [N] ones.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def jumprelu(vals, theta, entries, bandwidth):
  return entries.keep(vals * (vals > entries.per_latent(theta)))


def _jumprelu_fwd(vals, theta, entries, bandwidth):
  return jumprelu(vals, theta, entries, bandwidth), (vals, theta, entries)


def _jumprelu_bwd(bandwidth, res, g):
  vals, theta, entries = res
  t = entries.per_latent(theta)
  g = entries.keep(g)
  d_vals = g * (vals > t)
  d_theta = entries.latent_sum(g * (-t / bandwidth) * _kernel((vals - t) / bandwidth), theta.shape[0])
  return d_vals, d_theta, None


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def step(vals, theta, entries, bandwidth):
  """Heaviside H(pi - theta) with the STE pseudo-derivative for theta (none for pi). On the sparse
  path every entry where H or K can be non-zero (pi > theta - eps/2) is in the list, so sums over it
  equal the dense sums."""
  return entries.keep((vals > entries.per_latent(theta)).astype(jnp.float32))


def _step_fwd(vals, theta, entries, bandwidth):
  return step(vals, theta, entries, bandwidth), (vals, theta, entries)


def _step_bwd(bandwidth, res, g):
  vals, theta, entries = res
  t = entries.per_latent(theta)
  g = entries.keep(g)
  d_theta = entries.latent_sum(g * (-1.0 / bandwidth) * _kernel((vals - t) / bandwidth), theta.shape[0])
  return jnp.zeros_like(vals), d_theta, None


step.defvjp(_step_fwd, _step_bwd)


@dataclasses.dataclass(frozen=True)
class JumpReLU(common.Architecture):
  name = "jumprelu"
  export_arch = "jumprelu"
  adam_b1 = 0.0
  trains_threshold = True

  l0_coefficient: float = SAE_DEFAULTS.l0_coefficient  # lambda
  l0_warmup_steps: int = SAE_DEFAULTS.l0_warmup_steps  # steps of linear lambda warm-up
  bandwidth: float = SAE_DEFAULTS.bandwidth  # epsilon (scaled units)
  threshold_init: float = SAE_DEFAULTS.threshold_init  # theta_0 (scaled units)
  b_dec_init: str = SAE_DEFAULTS.b_dec_init  # "zeros" (Gemma Scope) or "mean" (of the first batch)
  threshold_init_l0: int = SAE_DEFAULTS.threshold_init_l0  # > 0: theta_i from the first batch
  b_dec_to_input: bool = SAE_DEFAULTS.b_dec_to_input  # encode x - b_dec (SAELens option)

  @property
  def applies_b_dec_to_input(self) -> bool:
    return self.b_dec_to_input

  @property
  def b_dec_from_data(self) -> bool:
    return self.b_dec_init == "mean"

  @property
  def thresholds_from_data(self) -> bool:
    return self.threshold_init_l0 > 0

  def initial_threshold(self) -> float:
    return self.threshold_init

  def initial_thresholds(self, params: Params, x: jax.Array) -> jax.Array:
    return common.data_thresholds(self.preact(params, x), self.threshold_init_l0)

  def encode(self, params: Params, pre: jax.Array) -> jax.Array:
    return pre * (pre > params["threshold"])

  def selection_threshold(self, params: Params, pre: jax.Array) -> jax.Array:
    """Entries the sparse path needs: active ones and those in the lower half of the eps-window
    (inactive, but their theta gradient needs d f)."""
    del pre
    return params["threshold"] - 0.5 * self.bandwidth

  def activation(self, params: Params, p, entries, ctx):
    return jumprelu(p, params["threshold"], entries, self.bandwidth)

  def objective(self, rec, b):
    return rec.weighted_sq / b  # the squared error per token (outlier rows down-weighted)

  def sparsity(self, params, x, pre, p, f, entries, rec, ctx):
    theta = params["threshold"]
    lam = self.l0_coefficient * jnp.minimum(1.0, ctx["step"] / max(1, self.l0_warmup_steps))
    v = jax.lax.stop_gradient(p)
    l0_surrogate = jnp.sum(step(v, theta, entries, self.bandwidth)) / x.shape[0]
    in_window = jnp.abs(v - entries.per_latent(theta)) < 0.5 * self.bandwidth
    window = jnp.sum(entries.keep(in_window.astype(jnp.float32))) / (x.shape[0] * self.width)
    return lam * l0_surrogate, {"window_share": window, "lam": lam}
