"""The SAE training step: train state, optimizer, and the pure per-device step program.

Step anatomy (one program per device, `vmap`ped over the device's layers; runtime.layer_parallel maps it
over devices with pmap or shard_map):
  1. x = s * x_raw (fp32), pre = x W_enc + b_enc (dense: the one inherently dense matmul);
  2. a static variant: with or without AuxK, built alone (`make_block_step(aux="off"|"on")`) and picked
     by the host loop between fetches (`aux_variant_for`: "off" while no latent can be dead before the
     next fetch), on every platform: on XLA:GPU a data-dependent conditional copies its index to the
     host and waits for the stream, and on CPU a `lax.switch` around the whole update cost 12% of the
     default's step (benchmarks/train_loop.py). Sparse or dense backward for architectures whose
     entries vary in number (sparse when every local layer's entries fit the COO capacity) is chosen
     per device, outside vmap, with `lax.switch` (under vmap a data-dependent `cond` would run both
     branches); "auto" backward (`for_platform`) runs dense on GPUs, which leaves no switch there;
  3. loss and gradients (custom VJPs for JumpReLU/Heaviside and for the sparse ops), optimizer update
     (decoder-gradient projection, global-norm clip, Adam), decoder renormalisation, theta >= 0,
     dead-latent counters, BatchTopK inference threshold.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.sae import common, sparse

# ---- state and settings -------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """One layer's trainer state (the trainer stacks every field on a leading layer axis)."""

  params: dict
  opt_state: Any
  step: jax.Array  # int32 []
  fired_ago: jax.Array  # int32 [M]: training tokens since the latent last fired (saturating)
  batch_threshold: jax.Array  # f32 []: BatchTopK inference threshold (-1 until seeded)
  input_scale: jax.Array  # f32 []: s with E||s x||^2 = 1 (1 for the legacy mode)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Static schedule settings (hashable: closed over by the jitted step)."""

  lr: float
  warmup_steps: int
  decay_fraction: float
  total_steps: int
  steps_per_epoch: int
  epochs: int
  grad_clip: float
  batch_size: int


def peak_lr(config, arch: common.Architecture) -> float:
  """`lr_rule="recipe"`: the architecture's recipe rate (Architecture.recipe_lr; JumpReLU has none and
  uses sae_training.lr); `"config"`: sae_training.lr for every architecture."""
  rule = config.sae_training.lr_rule
  if rule not in config_lib.LR_RULES:
    raise ConfigError(f"config.sae_training.lr_rule={rule!r}: use one of {config_lib.LR_RULES}")
  recipe = arch.recipe_lr() if rule == "recipe" else None
  return float(config.sae_training.lr) if recipe is None else recipe


def lr_schedule(arch: common.Architecture, s: Settings) -> Callable:
  if arch.cosine_per_epoch:  # annealed to 0 over the run's epochs (the original)

    def legacy(count):
      epoch = jnp.minimum(count // s.steps_per_epoch, s.epochs)
      return s.lr * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / s.epochs))

    return legacy
  decay_steps = int(round(s.decay_fraction * s.total_steps))

  def schedule(count):
    count = count.astype(jnp.float32)
    warm = 0.1 + 0.9 * jnp.minimum(1.0, count / max(1, s.warmup_steps))
    decay = 1.0
    if decay_steps > 0:
      decay = jnp.clip((s.total_steps - count) / decay_steps, 0.0, 1.0)
    return s.lr * warm * decay

  return schedule


def make_optimizer(arch: common.Architecture, s: Settings) -> optax.GradientTransformation:
  """The architecture's Adam (its b1 and eps; b2 0.999), after a global-norm clip per layer and, where
  the recipe has it, the decoder-gradient projection."""
  adam = optax.adam(lr_schedule(arch, s), b1=arch.adam_b1, b2=0.999, eps=arch.adam_eps)
  chain = [optax.clip_by_global_norm(s.grad_clip), adam]
  if arch.projects_decoder_grads:
    chain.insert(0, common.project_decoder_grads())
  return optax.chain(*chain)


def init_state(key: jax.Array, arch: common.Architecture, tx, scale) -> TrainState:
  params = arch.init_params(key)
  return TrainState(
    params=params,
    opt_state=tx.init(params),
    step=jnp.zeros((), jnp.int32),
    fired_ago=jnp.zeros((arch.width,), jnp.int32),
    batch_threshold=jnp.asarray(-1.0, jnp.float32),
    input_scale=jnp.asarray(scale, jnp.float32),
  )


# ---- which step runs where -----------------------------------------------------------------------

# Platforms (jax Device.platform or jax.export platform names) where "auto" backward runs dense.
DENSE_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def backward_path(backward: str, platform: str) -> str:
  """config.sae_training.backward resolved for `platform`: "sparse" or "dense"."""
  if backward not in config_lib.BACKWARDS:
    raise ConfigError(f"config.sae_training.backward={backward!r}: use one of {config_lib.BACKWARDS}")
  if backward == "auto":
    return "dense" if platform in DENSE_PLATFORMS else "sparse"
  return backward


def for_platform(arch: common.Architecture, backward: str, platform: str) -> common.Architecture:
  """`arch` with the sparse path switched off where `backward` resolves to dense on `platform`."""
  if backward_path(backward, platform) == "dense" and arch.sparse_capacity:
    return dataclasses.replace(arch, sparse_capacity=0)
  return arch


def aux_variant_for(arch: common.Architecture, max_fired_ago: int, steps_ahead: int, batch_size: int) -> str:
  """The AuxK variant that is exact for the next `steps_ahead` steps, decided on the host: "off" when
  no latent can become dead in them (a counter grows by at most `batch_size` per step), else "on"
  (AuxK computed every step; its term is masked to exactly 0 in steps without dead latents)."""
  if max_fired_ago + steps_ahead * batch_size < arch.dead_tokens:
    return "off"
  return "on"


# ---- the step -------------------------------------------------------------------------------------


def layer_update(
  arch: common.Architecture,
  s: Settings,
  tx,
  state: TrainState,
  x,
  pre,
  thr,
  coo,
  *,
  use_sparse: bool,
  use_aux: bool,
):
  """One optimizer step for ONE layer. x [B, D] scaled inputs, pre [B, M], thr [M] the selection
  threshold and coo the COO list of the entries above it (architectures without a fixed number of
  entries per token; ignored by the others)."""
  b = x.shape[0]
  params = state.params
  dead = state.fired_ago >= arch.dead_tokens
  ctx = {"step": state.step, "dead": dead, "use_aux": use_aux}
  entries = arch.entries(params, pre, thr, coo, use_sparse)

  def loss_fn(p):
    return arch.loss(p, x, pre, ctx, entries)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if not arch.trains_threshold:
    grads = {**grads, "threshold": jnp.zeros_like(grads["threshold"])}
  # The norm the global-norm clip sees (after the decoder-gradient projection): the same computation as
  # the clip's, which XLA then makes once (a separate norm of the raw gradient was a full extra pass).
  clipped = (
    common.project_decoder_grads().update(grads, None, params)[0] if arch.projects_decoder_grads else grads
  )
  grad_norm = optax.tree.norm(clipped)
  updates, opt_state = tx.update(grads, state.opt_state, params)
  if not arch.trains_threshold:
    updates = {**updates, "threshold": jnp.zeros_like(updates["threshold"])}
  new = optax.apply_updates(params, updates)
  every = arch.renormalise_every
  if every > 1:  # the original renormalised every 100 steps, without projection
    renorm = (state.step + 1) % every == 0
    new = {**new, "W_dec": jnp.where(renorm, common.renormalise_decoder(new)["W_dec"], new["W_dec"])}
  else:
    new = common.renormalise_decoder(new)
  if arch.trains_threshold:
    new = {**new, "threshold": jnp.maximum(new["threshold"], 0.0)}
  fired_ago = jnp.where(aux["fired"], 0, jnp.minimum(state.fired_ago + b, arch.dead_cap))
  bt = arch.update_batch_threshold(state.batch_threshold, state.step, aux)
  metrics = {k: v for k, v in aux.items() if k not in ("fired", "min_positive_code")}
  metrics.update(
    loss=loss,
    grad_norm=grad_norm,
    lr=lr_schedule(arch, s)(state.step),
    dead_fraction=jnp.mean(fired_ago >= arch.dead_tokens),
    batch_threshold=bt,
    sparse_path=jnp.asarray(float(use_sparse), jnp.float32),
    aux_active=jnp.asarray(float(use_aux), jnp.float32),
  )
  new_state = state.replace(
    params=new, opt_state=opt_state, step=state.step + 1, fired_ago=fired_ago, batch_threshold=bt
  )
  return new_state, metrics


def make_block_step(arch: common.Architecture, s: Settings, tx, aux: str = "switch") -> Callable:
  """block_step(states [l], x_raw [l, B, D]) -> (states, metrics [l]): one device's program.

  aux (architectures with AuxK): "switch" decides per step on the device whether any local latent is
  dead; "off" / "on" build that variant alone (no conditional; the caller guarantees "off" is exact).
  """
  if aux not in ("switch", "off", "on"):
    raise ValueError(f"aux={aux!r}: use 'switch', 'off' or 'on'")
  cap = arch.sparse_capacity
  per_token = arch.entries_per_token
  static_sparse = cap > 0 and per_token is not None and cap >= per_token
  dynamic_sparse = cap > 0 and per_token is None
  sparse_options = [True, False] if dynamic_sparse else [static_sparse]
  aux_options = [False, True] if arch.uses_aux_k else [False]
  if aux != "switch" and len(aux_options) == 2:
    aux_options = [aux == "on"]
  variants = [(sp, ax) for sp in sparse_options for ax in aux_options]

  def block_step(states: TrainState, x_raw):
    x = x_raw.astype(jnp.float32) * states.input_scale[:, None, None]
    # (x W_enc, b_enc): the bias is added where an entry is read (sparse.Preacts)
    pre = jax.vmap(arch.preacts)(states.params, x)
    if per_token is None:
      thr = jax.vmap(arch.selection_threshold)(states.params, pre)
    else:
      thr = jnp.zeros(pre.bias.shape, jnp.float32)

    coo, fits = None, None
    if dynamic_sparse:  # the list is built before the branch: its uncapped size picks the branch
      above = lambda pr, th: sparse.coo_above(sparse.as_dense(pr), th, x.shape[1] * cap)
      coo, total = jax.vmap(above)(pre, thr)
      fits = jnp.all(total <= x.shape[1] * cap)

    def run_variant(use_sparse, use_aux):
      fn = lambda st, xx, pr, th, c: layer_update(
        arch, s, tx, st, xx, pr, th, c, use_sparse=use_sparse, use_aux=use_aux
      )
      return jax.vmap(fn)(states, x, pre, thr, coo)

    if len(variants) == 1:
      return run_variant(*variants[0])
    index = jnp.asarray(0, jnp.int32)
    if dynamic_sparse:
      index = jnp.where(fits, 0, len(aux_options))
    if len(aux_options) == 2:
      any_dead = jnp.any(states.fired_ago >= arch.dead_tokens)
      index = index + any_dead.astype(jnp.int32)
    branches = [lambda sp=sp, ax=ax: run_variant(sp, ax) for sp, ax in variants]
    return jax.lax.switch(index, branches)

  return block_step
