"""The `train` stage: one SAE per layer, all layers stacked and trained together (docs/DESIGN.md).

  sae_train.run(config, workdir)                    # stage entry point (idempotent, resumable)
  saes = sae_train.load_trained_saes(config, workdir)

Step anatomy (one program per device, `vmap`ped over the device's layers; layer_parallel maps it over
devices with pmap or shard_map):
  1. x = s * x_raw (fp32), pre = x W_enc + b_enc (dense: the one inherently dense matmul);
  2. per device, outside vmap, choose a static variant with `lax.switch`: sparse or dense backward
     (sparse when every local layer's active entries fit the COO capacity), with or without AuxK
     (only when some local layer has dead latents). Under vmap a data-dependent `cond` would run both
     branches; deciding per device keeps one;
  3. loss and gradients (custom VJPs for JumpReLU/Heaviside and for the sparse ops), optimizer update
     (decoder-gradient projection, global-norm clip, Adam), decoder renormalisation, theta >= 0,
     dead-latent counters, BatchTopK inference threshold.

Host loop: prefetching data thread, NaN/Inf check every step (raises NonFiniteLossError; the last good
checkpoint is kept), metrics every `log_every` steps, Orbax checkpoints every `checkpoint_every` steps and
on SIGTERM (then exit status 75). After training: evaluation (sae_eval), SAELens export (sae.export),
the per-layer table in results/<model>/sae/, then DONE.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ghosttrack_jax import checkpointing, io_utils, layer_parallel, paths, sae_data, writer
from ghosttrack_jax.errors import ConfigError, IncompleteStoreError, NonFiniteLossError, StoreMismatchError
from ghosttrack_jax.sae import common, registry, relu_l1, sparse
# The DESIGN.md entry points for later stages live in sae/trained.py; re-exported here.
from ghosttrack_jax.sae.trained import TrainedSAEs, load_trained_saes  # noqa: F401

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
  """`lr_rule="recipe"`: jumprelu uses sae_training.lr, topk/batchtopk 2e-4/sqrt(M/2^14) (sparsify),
  relu_l1 1e-4 (the original); `"config"`: sae_training.lr for every architecture."""
  rule = config.sae_training.get("lr_rule", "recipe")
  if rule == "config" or hyper.arch == "jumprelu":
    return float(config.sae_training.lr)
  if rule != "recipe":
    raise ConfigError(f"config.sae_training.lr_rule={rule!r}: use 'recipe' or 'config'")
  if hyper.arch in ("topk", "batchtopk"):
    return 2e-4 / math.sqrt(hyper.width / 2**14)
  return 1e-4


def lr_schedule(hyper: common.Hyper, s: Settings) -> Callable:
  if hyper.arch == "relu_l1":  # per-epoch cosine annealing to 0 over the run's epochs (original)

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
  sched = lr_schedule(hyper, s)
  if hyper.arch == "jumprelu":
    adam = optax.adam(sched, b1=0.0, b2=0.999, eps=1e-8)
  elif hyper.arch in ("topk", "batchtopk"):
    adam = optax.adam(sched, b1=0.9, b2=0.999, eps=6.25e-10)
  else:
    adam = optax.adam(sched, b1=0.9, b2=0.999, eps=1e-8)
  chain = [optax.clip_by_global_norm(s.grad_clip), adam]
  if hyper.arch != "relu_l1":
    chain.insert(0, common.project_decoder_grads())
  return optax.chain(*chain)


def init_state(key: jax.Array, hyper: common.Hyper, tx, scale) -> TrainState:
  params = common.init_params(key, hyper)
  return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                    fired_ago=jnp.zeros((hyper.width,), jnp.int32),
                    batch_threshold=jnp.asarray(-1.0, jnp.float32),
                    input_scale=jnp.asarray(scale, jnp.float32))


# ---- the step -------------------------------------------------------------------------------------


def layer_update(hyper: common.Hyper, s: Settings, tx, state: TrainState, x, pre, thr, coo, *,
                 use_sparse: bool, use_aux: bool):
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
  if hyper.arch == "relu_l1":  # the original renormalised every 100 steps, without projection
    renorm = (state.step + 1) % relu_l1.DECODER_RENORM_EVERY == 0
    new = {**new, "W_dec": jnp.where(renorm, common.renormalise_decoder(new)["W_dec"], new["W_dec"])}
  else:
    new = common.renormalise_decoder(new)
  if hyper.trains_threshold:
    new = {**new, "threshold": jnp.maximum(new["threshold"], 0.0)}
  fired_ago = jnp.where(aux["fired"], 0, jnp.minimum(state.fired_ago + b, hyper.dead_cap))
  bt = state.batch_threshold
  if hyper.arch == "batchtopk":
    mp = aux["min_positive_code"]
    seeded = jnp.where(bt < 0, mp, hyper.batchtopk_threshold_beta * bt +
                       (1 - hyper.batchtopk_threshold_beta) * mp)
    bt = jnp.where((state.step >= hyper.batchtopk_threshold_start) & jnp.isfinite(mp), seeded, bt)
  metrics = {k: v for k, v in aux.items() if k not in ("fired", "min_positive_code")}
  metrics.update(loss=loss, grad_norm=grad_norm, lr=lr_schedule(hyper, s)(state.step), lam=lam,
                 dead_fraction=jnp.mean(fired_ago >= hyper.dead_tokens),
                 batch_threshold=bt, sparse_path=jnp.asarray(float(use_sparse), jnp.float32),
                 aux_active=jnp.asarray(float(use_aux), jnp.float32))
  new_state = state.replace(params=new, opt_state=opt_state, step=state.step + 1, fired_ago=fired_ago,
                            batch_threshold=bt)
  return new_state, metrics


def make_block_step(hyper: common.Hyper, s: Settings, tx) -> Callable:
  """block_step(states [l], x_raw [l, B, D]) -> (states, metrics [l]): one device's program."""
  arch = registry.get(hyper.arch)
  cap = hyper.sparse_capacity
  static_sparse = cap > 0 and not arch.dynamic_count and cap >= hyper.k
  dynamic_sparse = cap > 0 and arch.dynamic_count
  sparse_options = [True, False] if dynamic_sparse else [static_sparse]
  aux_options = [False, True] if arch.has_aux_k and hyper.aux_k_coefficient > 0 else [False]
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
      fn = lambda st, xx, pr, th, c: layer_update(hyper, s, tx, st, xx, pr, th, c,
                                                  use_sparse=use_sparse, use_aux=use_aux)
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


# ---- training loop --------------------------------------------------------------------------------


def _settings(config, hyper, plan: sae_data.DataPlan) -> Settings:
  t = config.sae_training
  return Settings(lr=peak_lr(config, hyper), warmup_steps=int(t.lr_warmup_steps),
                  decay_fraction=float(t.get("lr_decay_fraction", 0.0)), total_steps=plan.total_steps,
                  steps_per_epoch=plan.steps_per_epoch, epochs=int(t.epochs),
                  grad_clip=float(t.grad_clip), batch_size=int(t.batch_size))


def fingerprint(config, d_model: int, layers) -> dict:
  """The settings a checkpoint must share with the config to be resumed."""
  skip = {"parallel", "devices", "checkpoint_every", "log_every", "sparse_backward", "sparse_capacity",
          "eval_fraction", "eval_windows", "eval_tokens", "pad_layers", "keep_checkpoints"}
  t = {k: v for k, v in config.sae_training.to_dict().items() if k not in skip}
  return {"sae": config.sae.to_dict(), "sae_training": t, "seed": int(config.seed),
          "d_model": int(d_model), "layers": [int(l) for l in layers]}


def _jsonable(d):
  return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


@dataclasses.dataclass
class TrainResult:
  """Final host state of the real layers and what the run did."""

  state: TrainState  # numpy leaves [n_layers, ...]
  steps: int
  tokens_per_layer: int
  seconds: float
  layout: str
  sparse_backend: str


def data_plan(config, n_train_rows: int, window_rows: int) -> sae_data.DataPlan:
  t = config.sae_training
  return sae_data.DataPlan(n_train_rows=n_train_rows, batch_size=int(t.batch_size),
                           window_rows=int(window_rows), shuffle_windows=int(t.shuffle_windows),
                           epochs=int(t.epochs), rows_per_epoch=int(t.tokens_per_layer),
                           seed=int(config.seed))


def train(config, reader: sae_data.RowReader, *, layers: list[int], layer_positions: list[int],
          n_train_rows: int, window_rows: int, mean_sq_norms, ckpt_dir: str, log_dir: str,
          devices=None) -> TrainResult:
  """Trains (or resumes) the SAEs of `layers` (store positions `layer_positions`) on rows
  [0, n_train_rows) of `reader`. Returns the final state of the real layers."""
  t = config.sae_training
  d_model = int(reader.read([layer_positions[0]], 0, 1).shape[-1])
  hyper = common.hyper_from_config(config, d_model)
  plan = data_plan(config, n_train_rows, window_rows)
  settings = _settings(config, hyper, plan)
  tx = make_optimizer(hyper, settings)
  layout = layer_parallel.make_layout(len(layers), t.parallel, int(t.devices),
                                      pad=bool(t.get("pad_layers", True)), devices=devices)
  n_pad = layout.n_padded
  valid = layout.valid
  scales = (np.asarray(common.input_scale(np.asarray(mean_sq_norms, np.float64)), np.float32)
            if hyper.scales_inputs else np.ones(len(layers), np.float32))
  scales_pad = np.asarray([scales[layout.source(i)] for i in range(n_pad)], np.float32)
  root = jax.random.PRNGKey(int(config.seed))
  sae_root = jax.random.fold_in(root, 0x5AE)
  # Keys depend on the layer's identity (block index), not on its slot: a layer trained alone or in
  # any stack starts from the same parameters. A padding slot is an exact clone of the layer whose data
  # it reads (same key, same rows), so it never changes a per-device decision of the step.
  ids = [int(layers[layout.source(i)]) for i in range(n_pad)]
  keys = jnp.stack([jax.random.fold_in(sae_root, l) for l in ids])
  host = jax.device_get(jax.jit(jax.vmap(lambda k, sc: init_state(k, hyper, tx, sc)))(
      keys, jnp.asarray(scales_pad)))
  fp = _jsonable(fingerprint(config, d_model, layers))

  ckpt = checkpointing.Checkpointer(ckpt_dir, max_to_keep=int(t.get("keep_checkpoints", 2)))
  start_step = 0
  latest = ckpt.latest_step()
  if latest is not None:
    real = jax.tree_util.tree_map(lambda a: a[:len(layers)], host)
    restored, record = ckpt.restore(latest, real)
    if record.get("fingerprint") != fp:
      ckpt.close()
      raise StoreMismatchError(
          f"the checkpoint in {ckpt_dir} was made with other SAE settings than this config "
          f"(checkpoint: {record.get('fingerprint')}; config: {fp}). Delete {ckpt_dir} and "
          f"{os.path.dirname(log_dir)} to retrain, or use another --workdir.")
    # Padding slots are clones of their source layer (see above), so they are restored as such.
    src = np.asarray([layout.source(i) for i in range(n_pad)])
    host = jax.tree_util.tree_map(lambda r: np.asarray(r)[src], restored)
    start_step = int(record["step"])
    logging.info("resuming SAE training from step %d of %d (%s)", start_step, plan.total_steps,
                 record.get("data_position"))

  # With several processes each reads only its own devices' layers (layer_parallel.local_indices).
  device_sources = [[layer_positions[s] for s in layout.device_sources(d)]
                    for d in layout.local_indices]
  block_step = make_block_step(hyper, settings, tx)
  step_fn = layout.map_step(block_step)
  metric_writer = writer.MetricWriter(log_dir)
  t_start = time.time()
  tokens_done = 0
  prefetch = sae_data.Prefetcher(plan, reader, device_sources, start_step=start_step)
  step = start_step
  try:
    with checkpointing.preemption_guard() as preempted:
      batches = iter(prefetch)
      if start_step == 0 and hyper.b_dec_from_data and plan.total_steps > 0:
        first = next(batches)
        # b_dec starts at the mean of the first batch (see Hyper.b_dec_from_data).
        means = np.concatenate([blk.astype(np.float32).mean(axis=1) for blk in first[1]], axis=0)
        means = layout.gather_local_slots(means)  # every slot's mean on every process
        host.params["b_dec"] = (means * scales_pad[:, None]).astype(np.float32)
        batches = _chain([first], batches)
      if start_step == 0 and hyper.arch == "jumprelu" and hyper.threshold_init_l0 > 0:
        if not hyper.b_dec_from_data:
          first = next(batches)
          batches = _chain([first], batches)
        local = _data_thresholds(hyper, host, layout, first[1])
        host.params["threshold"] = layout.gather_local_slots(local)  # every slot, every process
      states = layout.put(host)
      last_log = time.time()
      for step, blocks in batches:
        states, metrics = step_fn(states, layout.put_blocks(blocks))
        m = layout.get(metrics)
        loss = m["loss"][valid]
        if not np.all(np.isfinite(loss)):
          bad = [layers[i] for i in np.nonzero(~np.isfinite(m["loss"]) & valid)[0]]
          ckpt.wait()
          raise NonFiniteLossError(
              f"SAE loss became NaN/Inf at step {step} for layer(s) {bad}. The last good checkpoint "
              f"(step {ckpt.latest_step()}) in {ckpt_dir} is kept. Lower config.sae_training.lr, check "
              "the activation store for non-finite rows, or lower the L0/L1 coefficient.")
        done = step + 1
        # Every process must stop at the same step: the checkpoint save below is collective.
        stop = layout.any_process(bool(preempted)) if layout.multi_process else bool(preempted)
        tokens_done += settings.batch_size
        if done % int(t.log_every) == 0 or done == plan.total_steps or done == start_step + 1:
          now = time.time()
          scalars = _layer_scalars(m, layers, valid)
          scalars["tokens_per_sec_per_layer"] = (settings.batch_size * int(t.log_every) /
                                                max(now - last_log, 1e-9))
          last_log = now
          metric_writer.write_scalars(done, scalars)
          logging.info("step %d/%d  loss %.4f  fvu %.3f  l0 %.1f  dead %.3f  sparse %.2f", done,
                       plan.total_steps, float(np.mean(loss)), float(np.mean(m["fvu"][valid])),
                       float(np.mean(m["l0"][valid])), float(np.mean(m["dead_fraction"][valid])),
                       float(np.mean(m["sparse_path"][valid])))
        if done % int(t.checkpoint_every) == 0 or done == plan.total_steps or stop:
          _save(ckpt, layout, states, done, plan, fp, layers, config)
        if stop:
          ckpt.wait()
          logging.warning("preempted: checkpoint at step %d saved in %s", done, ckpt_dir)
          raise checkpointing.Preempted(done)
      final = layout.get(states) if plan.total_steps > start_step else host
  finally:
    prefetch.close()
    metric_writer.close()
  if plan.total_steps > start_step:
    ckpt.wait()
  ckpt.close()
  real = jax.tree_util.tree_map(lambda a: np.asarray(a)[:len(layers)], final)
  return TrainResult(state=real, steps=plan.total_steps,
                     tokens_per_layer=plan.total_steps * settings.batch_size,
                     seconds=time.time() - t_start, layout=f"{layout.mode} x{layout.n_devices} "
                     f"({layout.per_device} layers/device, {n_pad - len(layers)} padding)",
                     sparse_backend=sparse_backend_name(hyper))


def _data_thresholds(hyper, host, layout, blocks) -> np.ndarray:
  """JumpReLU thresholds from the first batch (config sae.threshold_init_l0) for this process's slots
  (blocks of `layout.local_indices`), one slot at a time."""
  fn = jax.jit(lambda p, x, s: common.data_thresholds(common.preact(hyper, p, s * x.astype(jnp.float32)),
                                                      hyper.threshold_init_l0))
  slots = [s for d in layout.local_indices for s in layout.device_slots(d)]
  x_local = np.concatenate(blocks, axis=0)
  out = []
  for slot, x in zip(slots, x_local):
    p = {k: v[slot] for k, v in host.params.items()}
    out.append(np.asarray(fn(p, x, host.input_scale[slot])))
  return np.stack(out).astype(np.float32)


def _chain(first, rest):
  yield from first
  yield from rest


def sparse_backend_name(hyper) -> str:
  if hyper.sparse_capacity <= 0:
    return "dense"
  from ghosttrack_jax.sae import kernels  # pylint: disable=import-outside-toplevel
  return f"sparse ({kernels.backend()}), capacity {hyper.sparse_capacity}/token"


def _save(ckpt, layout, states, step, plan, fp, layers, config):
  host = layout.get(states)
  real = jax.tree_util.tree_map(lambda a: np.asarray(a)[:len(layers)], host)
  record = {"step": int(step), "data_position": plan.position(step), "fingerprint": fp,
            "layers": [int(l) for l in layers], "total_steps": plan.total_steps,
            "rng": {"seed": int(config.seed), "sae_key_fold": 0x5AE}}
  ckpt.save(step, real, record)


def _layer_scalars(m: dict, layers, valid) -> dict:
  out = {}
  for key, values in m.items():
    vals = np.asarray(values)[valid]
    out[f"mean/{key}"] = float(np.mean(vals))
    for layer, v in zip(layers, vals):
      out[f"layer_{layer:02d}/{key}"] = float(v)
  return out


# ---- the stage -----------------------------------------------------------------------------------


def run(config, workdir: str) -> None:
  """The `train` stage: train (or resume), evaluate, export, write the per-layer table, then DONE."""
  from ghosttrack_jax import activation_store  # pylint: disable=import-outside-toplevel
  from ghosttrack_jax import sae_eval  # pylint: disable=import-outside-toplevel
  from ghosttrack_jax.sae import export  # pylint: disable=import-outside-toplevel

  mp = paths.for_config(config, workdir)
  if io_utils.is_done(mp.sae_results):
    logging.info("train: %s is complete, skipping (delete it to retrain)", mp.sae_results)
    return
  store = activation_store.ActivationStore.open(mp.hidden_states, expect={"model": config.model.name})
  layers = store.layers
  positions = list(range(len(layers)))
  rows_per_window = store.rows_per_window
  n_eval_windows = max(1, int(round(config.sae_training.eval_fraction * store.n_windows)))
  n_train_windows = store.n_windows - n_eval_windows
  if n_train_windows <= 0:
    raise IncompleteStoreError(f"the store at {mp.hidden_states} has {store.n_windows} windows, too few "
                               "to hold out evaluation windows: extract more tokens")
  n_train_rows = n_train_windows * rows_per_window
  chunk_rows = int(store.activations.chunk_layout.read_chunk.shape[1])
  result = train(config, store, layers=layers, layer_positions=positions, n_train_rows=n_train_rows,
                 window_rows=chunk_rows, mean_sq_norms=store.mean_sq_norm(),
                 ckpt_dir=os.path.join(mp.checkpoints, "train_state"),
                 log_dir=os.path.join(mp.sae_results, "train_log"))
  if jax.process_index() != 0:  # several processes: process 0 alone evaluates and writes the outputs
    return
  hyper = common.hyper_from_config(config, store.d_model)
  final = finalize_params(hyper, result.state)
  report = sae_eval.evaluate(config, hyper, final, store, layers=layers, positions=positions,
                             eval_window_start=n_train_windows, fired_ago=result.state.fired_ago,
                             tokens_trained=result.tokens_per_layer,
                             tokens_per_epoch=result.tokens_per_layer // int(config.sae_training.epochs))
  with writer.MetricWriter(os.path.join(mp.sae_results, "train_log")) as w:  # held-out, final step
    scalars = {}
    for row in report.rows:
      for key, value in row.items():
        if key != "layer" and isinstance(value, (int, float)) and not isinstance(value, bool):
          scalars[f"eval/layer_{row['layer']:02d}/{key}"] = value
    w.write_scalars(result.steps, scalars)
    for i, layer in enumerate(layers):
      w.write_histogram(result.steps, f"eval/layer_{layer:02d}/log10_density", report.log_density[i])
  export.write_all(mp.sae_export, hyper, final, layers=layers, model_name=config.model.name,
                   context_size=int(store.meta.get("seq_len", 0)), sparsity=report.log_density,
                   extra={"training": {"steps": result.steps, "tokens_per_layer":
                                       result.tokens_per_layer, "seconds": round(result.seconds, 1),
                                       "layout": result.layout, "backward": result.sparse_backend}})
  sae_eval.write_tables(mp.sae_results, report, meta={
      "model": config.model.name, "arch": hyper.arch, "width": hyper.width, "d_model": hyper.d_model,
      "steps": result.steps, "tokens_per_layer": result.tokens_per_layer,
      "train_seconds": round(result.seconds, 1), "layout": result.layout,
      "backward": result.sparse_backend, "batch_size": int(config.sae_training.batch_size),
      "lr": peak_lr(config, hyper), "config": _jsonable(fingerprint(config, hyper.d_model, layers))})
  digest = manifest_hash(mp.sae_export, layers)
  io_utils.write_done(mp.sae_export, {"layers": layers, "sha256": digest})
  io_utils.write_done(mp.sae_results, {"layers": layers, "arch": hyper.arch, "sae_manifest_hash": digest})


@dataclasses.dataclass
class FinalSAEs:
  """Trained parameters in training units (not folded) plus what inference needs."""

  params: dict  # stacked [L, ...] numpy, threshold = inference threshold
  input_scale: np.ndarray  # [L]


def finalize_params(hyper: common.Hyper, state: TrainState) -> FinalSAEs:
  """Training state -> inference parameters: BatchTopK's theta becomes theta_glob for every latent."""
  params = {k: np.asarray(v, np.float32) for k, v in state.params.items()}
  if hyper.arch == "batchtopk":
    bt = np.asarray(state.batch_threshold, np.float32)
    bt = np.where(bt < 0, 0.0, bt)  # never seeded (run shorter than the start step): plain ReLU
    params["threshold"] = np.broadcast_to(bt[:, None], params["threshold"].shape).copy()
  if hyper.arch == "topk":
    params["threshold"] = np.zeros_like(params["threshold"])
  return FinalSAEs(params=params, input_scale=np.asarray(state.input_scale, np.float32))


def manifest_hash(export_dir: str, layers) -> str:
  h = hashlib.sha256()
  for layer in layers:
    for name in ("cfg.json", "sae_weights.safetensors"):
      with open(os.path.join(export_dir, f"layer_{int(layer):02d}", name), "rb") as f:
        h.update(f.read())
  return h.hexdigest()
