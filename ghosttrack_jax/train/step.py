"""The SAE training step: train state, optimizer, and the pure per-device step program.

Step anatomy (one program per device, `vmap`ped over the device's layers; runtime.layer_parallel maps it
over devices with pmap or shard_map):
  1. x = s * x_raw (fp32), pre = x W_enc + b_enc (dense: the one inherently dense matmul);
  2. per device, outside vmap, choose a static variant with `lax.switch`: sparse or dense backward
     (sparse when every local layer's active entries fit the COO capacity), with or without AuxK
     (only when some local layer has dead latents). Under vmap a data-dependent `cond` would run both
     branches; deciding per device keeps one. On XLA:GPU every data-dependent conditional copies its
     index to the host and waits for the stream, so there `make_block_step(aux="off"|"on")` builds one
     fixed variant and the host loop picks it between fetches (`aux_variant_for`); "auto" backward
     (`for_platform`) runs dense there, which leaves no other switch;
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
from ghosttrack_jax.sae import common, registry, sparse

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


def peak_lr(config, hyper: common.Hyper) -> float:
  """`lr_rule="recipe"`: the architecture's recipe rate (registry.Architecture.recipe_lr; JumpReLU has
  none and uses sae_training.lr); `"config"`: sae_training.lr for every architecture."""
  rule = config.sae_training.lr_rule
  if rule not in config_lib.LR_RULES:
    raise ConfigError(f"config.sae_training.lr_rule={rule!r}: use one of {config_lib.LR_RULES}")
  recipe = registry.get(hyper.arch).recipe_lr(hyper.width) if rule == "recipe" else None
  return float(config.sae_training.lr) if recipe is None else recipe


def lr_schedule(hyper: common.Hyper, s: Settings) -> Callable:
  if registry.get(hyper.arch).cosine_per_epoch:  # annealed to 0 over the run's epochs (the original)

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


def make_optimizer(hyper: common.Hyper, s: Settings) -> optax.GradientTransformation:
  """Recipes: jumprelu Adam(0, 0.999, 1e-8); topk/batchtopk Adam(0.9, 0.999, 6.25e-10); legacy
  Adam(0.9, 0.999, 1e-8) without gradient projection. Global-norm clip per layer."""
  arch = registry.get(hyper.arch)
  adam = optax.adam(lr_schedule(hyper, s), b1=arch.adam_b1, b2=0.999, eps=arch.adam_eps)
  chain = [optax.clip_by_global_norm(s.grad_clip), adam]
  if arch.projects_decoder_grads:
    chain.insert(0, common.project_decoder_grads())
  return optax.chain(*chain)


def init_state(key: jax.Array, hyper: common.Hyper, tx, scale) -> TrainState:
  params = common.init_params(key, hyper)
  return TrainState(
    params=params,
    opt_state=tx.init(params),
    step=jnp.zeros((), jnp.int32),
    fired_ago=jnp.zeros((hyper.width,), jnp.int32),
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


def for_platform(hyper: common.Hyper, backward: str, platform: str) -> common.Hyper:
  """`hyper` with the sparse path switched off where `backward` resolves to dense on `platform`."""
  if backward_path(backward, platform) == "dense" and hyper.sparse_capacity:
    return dataclasses.replace(hyper, sparse_capacity=0)
  return hyper


def uses_conditionals(platform: str) -> bool:
  """Whether the step may choose its variant with a data-dependent `lax.switch` (cheap on CPU; a
  device->host sync per step on XLA:GPU)."""
  return platform not in DENSE_PLATFORMS


def has_aux_variants(hyper: common.Hyper) -> bool:
  return registry.get(hyper.arch).has_aux_k and hyper.aux_k_coefficient > 0


def aux_variant_for(hyper: common.Hyper, max_fired_ago: int, steps_ahead: int, batch_size: int) -> str:
  """The AuxK variant that is exact for the next `steps_ahead` steps, decided on the host: "off" when
  no latent can become dead in them (a counter grows by at most `batch_size` per step), else "on"
  (AuxK computed every step; its term is masked to exactly 0 in steps without dead latents)."""
  if max_fired_ago + steps_ahead * batch_size < hyper.dead_tokens:
    return "off"
  return "on"


# ---- the step -------------------------------------------------------------------------------------


def layer_update(
  hyper: common.Hyper,
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
  """One optimizer step for ONE layer. x [B, D] scaled inputs, pre [B, M], thr [M] COO threshold,
  coo: the COO list of the entries above thr (threshold architectures; None for TopK)."""
  arch = registry.get(hyper.arch)
  b = x.shape[0]
  params = state.params
  lam = hyper.l0_coefficient * jnp.minimum(1.0, state.step / max(1, hyper.l0_warmup_steps))
  dead = state.fired_ago >= hyper.dead_tokens
  ctx = {"lam": lam, "dead": dead, "use_aux": use_aux, "threshold": thr}
  if not use_sparse:
    coo = None
  elif arch.coo_threshold is None:
    coo = sparse.coo_topk(pre, hyper.k)

  def loss_fn(p):
    return arch.loss(hyper, p, x, pre, ctx, coo)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if not hyper.trains_threshold:
    grads = {**grads, "threshold": jnp.zeros_like(grads["threshold"])}
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, params)
  if not hyper.trains_threshold:
    updates = {**updates, "threshold": jnp.zeros_like(updates["threshold"])}
  new = optax.apply_updates(params, updates)
  every = registry.get(hyper.arch).renormalise_every
  if every > 1:  # the original renormalised every 100 steps, without projection
    renorm = (state.step + 1) % every == 0
    new = {**new, "W_dec": jnp.where(renorm, common.renormalise_decoder(new)["W_dec"], new["W_dec"])}
  else:
    new = common.renormalise_decoder(new)
  if hyper.trains_threshold:
    new = {**new, "threshold": jnp.maximum(new["threshold"], 0.0)}
  fired_ago = jnp.where(aux["fired"], 0, jnp.minimum(state.fired_ago + b, hyper.dead_cap))
  bt = state.batch_threshold
  if registry.get(hyper.arch).ema_batch_threshold:
    mp = aux["min_positive_code"]
    seeded = jnp.where(
      bt < 0, mp, hyper.batchtopk_threshold_beta * bt + (1 - hyper.batchtopk_threshold_beta) * mp
    )
    bt = jnp.where((state.step >= hyper.batchtopk_threshold_start) & jnp.isfinite(mp), seeded, bt)
  metrics = {k: v for k, v in aux.items() if k not in ("fired", "min_positive_code")}
  metrics.update(
    loss=loss,
    grad_norm=grad_norm,
    lr=lr_schedule(hyper, s)(state.step),
    lam=lam,
    dead_fraction=jnp.mean(fired_ago >= hyper.dead_tokens),
    batch_threshold=bt,
    sparse_path=jnp.asarray(float(use_sparse), jnp.float32),
    aux_active=jnp.asarray(float(use_aux), jnp.float32),
  )
  new_state = state.replace(
    params=new, opt_state=opt_state, step=state.step + 1, fired_ago=fired_ago, batch_threshold=bt
  )
  return new_state, metrics


def make_block_step(hyper: common.Hyper, s: Settings, tx, aux: str = "switch") -> Callable:
  """block_step(states [l], x_raw [l, B, D]) -> (states, metrics [l]): one device's program.

  aux (architectures with AuxK): "switch" decides per step on the device whether any local latent is
  dead; "off" / "on" build that variant alone (no conditional; the caller guarantees "off" is exact).
  """
  if aux not in ("switch", "off", "on"):
    raise ValueError(f"aux={aux!r}: use 'switch', 'off' or 'on'")
  arch = registry.get(hyper.arch)
  cap = hyper.sparse_capacity
  static_sparse = cap > 0 and not arch.dynamic_count and cap >= hyper.k
  dynamic_sparse = cap > 0 and arch.dynamic_count
  sparse_options = [True, False] if dynamic_sparse else [static_sparse]
  aux_options = [False, True] if has_aux_variants(hyper) else [False]
  if aux != "switch" and len(aux_options) == 2:
    aux_options = [aux == "on"]
  variants = [(sp, ax) for sp in sparse_options for ax in aux_options]

  def block_step(states: TrainState, x_raw):
    x = x_raw.astype(jnp.float32) * states.input_scale[:, None, None]
    pre = jax.vmap(lambda p, xx: common.preact(hyper, p, xx))(states.params, x)
    if arch.coo_threshold is not None:
      thr = jax.vmap(lambda p, pr: arch.coo_threshold(hyper, p, pr))(states.params, pre)
    else:
      thr = jnp.zeros(pre.shape[:1] + pre.shape[2:], jnp.float32)

    coo, fits = None, None
    if dynamic_sparse:  # the list is built before the branch: its uncapped size picks the branch
      coo, total = jax.vmap(lambda pr, th: sparse.coo_above(pr, th, x.shape[1] * cap))(pre, thr)
      fits = jnp.all(total <= x.shape[1] * cap)

    def run_variant(use_sparse, use_aux):
      fn = lambda st, xx, pr, th, c: layer_update(
        hyper, s, tx, st, xx, pr, th, c, use_sparse=use_sparse, use_aux=use_aux
      )
      return jax.vmap(fn)(states, x, pre, thr, coo)

    if len(variants) == 1:
      return run_variant(*variants[0])
    index = jnp.asarray(0, jnp.int32)
    if dynamic_sparse:
      index = jnp.where(fits, 0, len(aux_options))
    if len(aux_options) == 2:
      any_dead = jnp.any(states.fired_ago >= hyper.dead_tokens)
      index = index + any_dead.astype(jnp.int32)
    branches = [lambda sp=sp, ax=ax: run_variant(sp, ax) for sp, ax in variants]
    return jax.lax.switch(index, branches)

  return block_step
