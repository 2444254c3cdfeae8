"""What every SAE architecture shares: the `Architecture` base class, the Flax parameter module, the loss
skeleton with its reconstruction terms and metrics, the decoder constraint and the input scale.

One architecture is one object: a frozen dataclass (hashable, so jitted code closes over it) of its
hyper-parameters, whose methods are its initialisation, encoder, selection of the active entries,
activation, sparsity term, training recipe and export form. Each lives in one file (jumprelu.py, topk.py,
batchtopk.py, relu_l1.py) and is named in sae.registry, which builds it from the config.

Storage layout (the same as SAELens and Gemma Scope, so exports need no transposes), per layer:
  W_enc [d_model, d_sae], b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model], threshold [d_sae].
Every method here is written for ONE layer; the trainer `vmap`s it over a leading `layer` axis.
Inputs are in scaled units (`s * x`, with `E||s x||^2 = 1`), except for the legacy mode, which trains on
raw activations like the original GhostTrack (its input scale is 1).

The loss is written once (`Architecture.loss`) against sae.sparse's entries interface: `sparse.Dense`
(every [B, M] entry, or a mask of them) and `sparse.Coo` (a COO list of the active entries, whose backward
costs O(entries x d_model)); an architecture supplies only its activation and sparsity terms.
"""

import dataclasses
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ghosttrack_jax import config_lib
from ghosttrack_jax.sae import sparse

Params = dict[str, jax.Array]
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")

# The defaults of every architecture's fields are config_lib.base_config()'s (one place for them); the
# registry passes every field from the config, so they only serve architectures built directly (tests,
# benchmarks).
SAE_DEFAULTS = config_lib.base_config().sae


class Reconstruction(NamedTuple):
  """The reconstruction terms of one batch, shared by every loss and by the logged FVU."""

  err: jax.Array  # [B, D] x - x_hat
  sq: jax.Array  # sum ||x - x_hat||^2
  fvu: jax.Array  # sq / sum ||x - mean(x)||^2 (unweighted: what is logged)
  weights: jax.Array | None  # [B] row weights (row_weights), None when every row counts 1
  weighted_sq: jax.Array  # sum w ||x - x_hat||^2 (= sq without weights)
  weighted_var: jax.Array  # sum w ||x - mean_w(x)||^2 (= the FVU's denominator without weights)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One SAE family with its hyper-parameters. Subclasses set the class constants of their recipe
  (docs/sae_recipes.md) and override the methods marked as theirs; the trainer (train.step, train.loop),
  the evaluator (train.quality), the exporter (sae.export) and the later stages (sae.trained) only call
  these, never branch on `name`."""

  name: ClassVar[str] = ""  # config.sae.arch
  export_arch: ClassVar[str] = "jumprelu"  # SAELens architecture of the export ("jumprelu" or "topk")
  # The training recipe.
  adam_b1: ClassVar[float] = 0.9  # Adam's first-moment decay (b2 is 0.999 everywhere)
  adam_eps: ClassVar[float] = 1e-8
  projects_decoder_grads: ClassVar[bool] = True  # remove each decoder row's gradient along the row
  renormalise_every: ClassVar[int] = 1  # steps between decoder-row renormalisations
  cosine_per_epoch: ClassVar[bool] = False  # lr annealed to 0 per epoch (the original) vs warm-up/decay
  trains_threshold: ClassVar[bool] = False  # `threshold` is a trained parameter (clipped at 0)
  scales_inputs: ClassVar[bool] = True  # trains on s * x (E||s x||^2 = 1); False: raw activations

  d_model: int  # input width D
  width: int  # latents M
  # COO slots per token (flat over the batch). Not the config's default on purpose: 0 is the dense
  # path, the reference every sparse-path test compares with; the registry sets it from the config.
  sparse_capacity: int = 0
  dead_tokens: int = SAE_DEFAULTS.dead_tokens  # tokens without firing after which a latent is dead
  encoder_init_scale: float = SAE_DEFAULTS.encoder_init_scale  # tied init: W_enc = this * W_dec^T
  # > 0: rows above this x the batch median norm are down-weighted in the loss (row_weights)
  outlier_norm_ratio: float = SAE_DEFAULTS.outlier_norm_ratio

  # ---- facts the trainer and the later stages read ------------------------------------------------

  @property
  def applies_b_dec_to_input(self) -> bool:
    """Codes are computed from x - b_dec (the SAELens field of the same name)."""
    return False

  @property
  def b_dec_from_data(self) -> bool:
    """b_dec starts at the first training batch's mean (scaled units)."""
    return False

  @property
  def thresholds_from_data(self) -> bool:
    """Per-latent thresholds start from the first training batch (`initial_thresholds`)."""
    return False

  @property
  def entries_per_token(self) -> int | None:
    """The fixed number of active entries per token, or None when a threshold selects a varying number
    (then the sparse path builds its COO list before the step and checks its capacity)."""
    return None

  @property
  def uses_aux_k(self) -> bool:
    """The loss has an AuxK term for dead latents (the step then comes in variants with and without)."""
    return False

  @property
  def aux_k_entries(self) -> int:
    """AuxK entries per token (COO memory of the sparse path); 0 without AuxK."""
    return 0

  @property
  def dead_cap(self) -> int:
    """Saturation value of the int32 dead counters (just above the dead window, never overflows)."""
    return int(min(self.dead_tokens + 1, 2**31 - 2**24))

  def recipe_lr(self) -> float | None:
    """The peak learning rate of `sae_training.lr_rule="recipe"` (None: sae_training.lr)."""
    return None

  @classmethod
  def config_problems(cls, sae_config) -> list[str]:
    """Problems of config.sae for this architecture beyond the per-field checks of config_lib."""
    del sae_config
    return []

  # ---- parameters -------------------------------------------------------------------------------------

  def initial_threshold(self) -> float:
    return 0.0

  def param_initialisers(self) -> list[tuple[str, Any]]:
    """(name, init(key, made) -> array) in creation order (each draws one key from Flax's "params" stream,
    so the order fixes the parameters). Tied initialisation (docs/sae_recipes.md §1.3): W_dec
    Kaiming-uniform with unit rows, W_enc = encoder_init_scale * W_dec^T, zero biases."""
    d, m = self.d_model, self.width
    return [
      # Kaiming-uniform (the scale is irrelevant: rows are normalised next)
      ("W_dec", lambda k, made: _unit_rows(nn.initializers.kaiming_uniform()(k, (m, d), jnp.float32))),
      # A small tied encoder (encoder_init_scale < 1) starts with small codes, so the first steps do not
      # overshoot: measured in benchmarks/sae_quality.py (benchmarks/RESULTS.md).
      ("W_enc", lambda k, made: self.encoder_init_scale * made["W_dec"].T),
      ("b_enc", lambda k, made: jnp.zeros((m,), jnp.float32)),
      ("b_dec", lambda k, made: jnp.zeros((d,), jnp.float32)),
      ("threshold", lambda k, made: jnp.full((m,), self.initial_threshold(), jnp.float32)),
    ]

  def init_params(self, key: jax.Array) -> Params:
    """One layer's parameters (fp32). vmap over keys for a stack."""
    variables = SparseAutoencoder(self).init(key, jnp.zeros((1, self.d_model), jnp.float32))
    return {name: variables["params"][name] for name in PARAM_NAMES}

  def initial_thresholds(self, params: Params, x: jax.Array) -> jax.Array:
    """Per-latent thresholds [M] from a first batch x [B, D] (scaled); only where thresholds_from_data."""
    raise NotImplementedError(f"{self.name} has no data-dependent thresholds")

  # ---- inference ---------------------------------------------------------------------------------------

  def preact(self, params: Params, x: jax.Array) -> jax.Array:
    """[N, D] (scaled) -> [N, M] pre-activations."""
    return self.preacts(params, x).dense()

  def preacts(self, params: Params, x: jax.Array) -> sparse.Preacts:
    """The pre-activations as (x' W_enc, b_enc), the bias not yet added (see sparse.Preacts)."""
    raw = SparseAutoencoder(self).apply({"params": params}, x, method=SparseAutoencoder.preact_raw)
    return sparse.Preacts(raw, params["b_enc"])

  def decode(self, params: Params, f: jax.Array) -> jax.Array:
    """[N, M] codes -> [N, D] reconstruction."""
    return SparseAutoencoder(self).apply({"params": params}, f, method=SparseAutoencoder.decode)

  def encode(self, params: Params, pre: jax.Array) -> jax.Array:
    """[N, M] inference codes from pre-activations (the architecture's)."""
    raise NotImplementedError

  def codes(self, params: Params, x: jax.Array) -> jax.Array:
    """x [N, D] -> codes [N, M], in the units of `params` (training units, or raw units with the
    export's folded parameters)."""
    return self.encode(params, self.preact(params, x.astype(jnp.float32)))

  def encode_decode(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [N, D] -> (codes [N, M], reconstruction [N, D])."""
    f = self.codes(params, x)
    return f, self.decode(params, f)

  def inference_params(self, params: dict, batch_threshold) -> dict:
    """Trained parameters (numpy, stacked [L, ...]) -> the inference form that is exported; the
    threshold is the inference threshold."""
    del batch_threshold
    return params

  def saelens_fields(self) -> dict:
    """The export's architecture-specific cfg.json fields."""
    return {}

  # ---- training ------------------------------------------------------------------------------------

  def selection_threshold(self, params: Params, pre: jax.Array) -> jax.Array:
    """[M]: the sparse path's COO list holds the entries with pre > this (architectures whose
    entries_per_token is None)."""
    raise NotImplementedError

  def entries(self, params: Params, pre: jax.Array, thr, coo, use_sparse: bool):
    """The entries the loss works on: `coo` (built from selection_threshold before the step) on the
    sparse path, every entry (`sparse.Dense()`) on the dense one."""
    del params, pre, thr
    return coo if use_sparse else sparse.Dense()

  def activation(self, params: Params, p: jax.Array, entries, ctx: dict) -> jax.Array:
    """Codes at the entries from their pre-activations p (differentiable)."""
    raise NotImplementedError

  def objective(self, rec: Reconstruction, b: int) -> jax.Array:
    """The reconstruction objective from the shared terms (b: rows of the batch)."""
    raise NotImplementedError

  def sparsity(self, params: Params, x, pre, p, f, entries, rec: Reconstruction, ctx: dict):
    """(the sparsity or auxiliary loss term, extra metrics) of the architecture."""
    raise NotImplementedError

  def update_batch_threshold(self, bt: jax.Array, step: jax.Array, aux: dict) -> jax.Array:
    """The inference threshold kept in the train state (BatchTopK); others leave it as it is."""
    del step, aux
    return bt

  def b_pre(self, params: Params, x: jax.Array) -> jax.Array:
    """What the encoder subtracts from its input: b_dec, or zeros."""
    return params["b_dec"] if self.applies_b_dec_to_input else jnp.zeros((self.d_model,), x.dtype)

  def loss(self, params: Params, x: jax.Array, pre, ctx: dict, entries):
    """Per-layer loss and metrics. x [B, D] scaled inputs; pre [B, M] the precomputed pre-activations
    (the dense encoder forward; an array or a sparse.Preacts); entries: sparse.Dense or sparse.Coo (see `entries`); ctx: "step" (int32
    []), "dead" ([M] bool), "use_aux" (static bool). Returns (loss, aux) with aux the metrics plus
    "fired" [M] and "min_positive_code"."""
    b = x.shape[0]
    p = entries.preact(x, self.b_pre(params, x), params["W_enc"], params["b_enc"], pre)
    f = self.activation(params, p, entries, ctx)
    x_hat = entries.decode(f, params["W_dec"], b) + params["b_dec"]
    rec = reconstruction(x, x_hat, row_weights(self, x))
    sparsity, extra = self.sparsity(params, x, pre, p, f, entries, rec, ctx)
    active = f > 0
    theta = params["threshold"]
    aux = {
      "mse": rec.sq / b,
      "fvu": rec.fvu,
      "l0": jnp.sum(entries.keep(active.astype(jnp.float32))) / b,
      "sparsity_loss": sparsity,
      "fired": entries.latent_any(active, self.width),
      "theta_mean": jnp.mean(theta),
      "theta_min": jnp.min(theta),
      "theta_max": jnp.max(theta),
      "min_positive_code": jnp.min(jnp.where(active, f, jnp.inf)),
      **extra,
    }
    return self.objective(rec, b) + sparsity, aux


class SparseAutoencoder(nn.Module):
  """One layer's SAE parameters (created by the architecture's initialisers) and the dense encoder and
  decoder."""

  arch: Architecture

  def setup(self):
    made = {}
    for name, init in self.arch.param_initialisers():
      made[name] = self.param(name, lambda key, init=init: init(key, made))
    self.p = made

  def preact_raw(self, x: jax.Array) -> jax.Array:
    """x' W_enc, x' = x - b_dec where the architecture subtracts it (the bias b_enc is added later)."""
    if self.arch.applies_b_dec_to_input:
      x = x - self.p["b_dec"]
    return x @ self.p["W_enc"]

  def decode(self, f: jax.Array) -> jax.Array:
    return f @ self.p["W_dec"] + self.p["b_dec"]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.preact_raw(x) + self.p["b_enc"]


def _unit_rows(w: jax.Array) -> jax.Array:
  return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


# ---- the shared loss terms ------------------------------------------------------------------------


def row_weights(arch: Architecture, x: jax.Array) -> jax.Array | None:
  """Per-row weights [B] of the reconstruction loss, or None (outlier_norm_ratio = 0: all 1).

  Residual streams have rare massive-activation rows (norm ~100x the median): one such row can carry
  most of a batch's squared error, so the SAE spends its capacity on them. A row whose norm exceeds
  c = outlier_norm_ratio x the batch's median norm gets weight (c / ||x||)^2: its error counts as much
  as that of a row at the cap would, relative to its norm. No gradient flows through the weights.
  """
  if arch.outlier_norm_ratio <= 0:
    return None
  norms = jnp.linalg.norm(x, axis=-1)
  cap = arch.outlier_norm_ratio * jnp.median(norms)
  w = jnp.minimum(1.0, jnp.square(cap / jnp.maximum(norms, 1e-12)))
  return jax.lax.stop_gradient(w)


def reconstruction(x: jax.Array, x_hat: jax.Array, w: jax.Array | None) -> Reconstruction:
  err = x - x_hat
  sq = jnp.sum(err * err)
  centred = x - jnp.mean(x, axis=0)
  denom = jnp.sum(centred * centred)
  if w is None:
    weighted_sq, weighted_var = sq, denom
  else:  # the weighted mean in the weighted variance, so that the weighted FVU of x_hat = mean is 1
    w_mean = jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w)
    weighted_var = jnp.sum(w * jnp.sum(jnp.square(x - w_mean), axis=-1))
    weighted_sq = jnp.sum(w * jnp.sum(err * err, axis=-1))
  return Reconstruction(err, sq, sq / denom, w, weighted_sq, weighted_var)


def data_thresholds(pre: jax.Array, l0: int) -> jax.Array:
  """Per-latent thresholds at the (1 - l0/M) quantile of each latent's pre-activations [B, M]: every
  latent fires on the same share of the batch and the mean L0 is about `l0` (never below 0)."""
  m = pre.shape[-1]
  q = 1.0 - min(max(l0, 1), m) / m
  return jnp.maximum(jnp.quantile(pre, q, axis=0), 0.0)


def legacy_uniform(bound: float):
  """PyTorch `Linear`'s default initialiser U(-bound, bound) (the legacy mode's)."""
  return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)


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


def fold_input_scale(params: Params, scale, arch: Architecture | None = None) -> Params:
  """Export form (docs/sae_recipes.md §1.1): W_enc*s, W_dec/s, b_dec/s; b_enc and theta unchanged.

  Works on one layer or a stack (scale [L] broadcast over the trailing axes); the same for every
  architecture (`arch` is accepted for the callers that pass it).
  """
  del arch
  s = jnp.asarray(scale, jnp.float32)
  s2 = s.reshape(s.shape + (1, 1))
  s1 = s.reshape(s.shape + (1,))
  return {
    "W_enc": params["W_enc"] * s2,
    "b_enc": params["b_enc"],
    "W_dec": params["W_dec"] / s2,
    "b_dec": params["b_dec"] / s1,
    "threshold": params["threshold"],
  }
