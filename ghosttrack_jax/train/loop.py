"""The host training loop of the layer-stacked SAE trainer.

`train(...)` initialises (or resumes from an Orbax checkpoint) the stacked train state, feeds batches from
the prefetching reader (train.data) through the mapped step (train.step, runtime.layer_parallel), checks
for NaN/Inf every step (NonFiniteLossError; the last good checkpoint is kept), logs metrics every
`log_every` steps, checkpoints every `checkpoint_every` steps and on SIGTERM (then exit status 75).
"""

import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import NonFiniteLossError, StoreMismatchError
from ghosttrack_jax.runtime import checkpointing, layer_parallel, writer
from ghosttrack_jax.sae import common, kernels
from ghosttrack_jax.train import data as train_data
from ghosttrack_jax.train import step as train_step


def settings_for(config, hyper, plan: train_data.DataPlan) -> train_step.Settings:
  t = config.sae_training
  return train_step.Settings(
    lr=train_step.peak_lr(config, hyper),
    warmup_steps=int(t.lr_warmup_steps),
    decay_fraction=float(t.lr_decay_fraction),
    total_steps=plan.total_steps,
    steps_per_epoch=plan.steps_per_epoch,
    epochs=int(t.epochs),
    grad_clip=float(t.grad_clip),
    batch_size=int(t.batch_size),
  )


def fingerprint(config, d_model: int, layers) -> dict:
  """The settings a checkpoint must share with the config to be resumed."""
  skip = {
    "parallel",
    "devices",
    "checkpoint_every",
    "log_every",
    "backward",
    "sparse_capacity",
    "eval_fraction",
    "eval_windows",
    "eval_tokens",
    "pad_layers",
    "keep_checkpoints",
  }
  t = {k: v for k, v in config.sae_training.to_dict().items() if k not in skip}
  return {
    "sae": config.sae.to_dict(),
    "sae_training": t,
    "seed": int(config.seed),
    "d_model": int(d_model),
    "layers": [int(l) for l in layers],
  }


def jsonable(d):
  return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


@dataclasses.dataclass
class TrainResult:
  """Final host state of the real layers and what the run did."""

  state: train_step.TrainState  # numpy leaves [n_layers, ...]
  steps: int
  tokens_per_layer: int
  seconds: float
  layout: str
  sparse_backend: str


def data_plan(config, n_train_rows: int, window_rows: int) -> train_data.DataPlan:
  t = config.sae_training
  return train_data.DataPlan(
    n_train_rows=n_train_rows,
    batch_size=int(t.batch_size),
    window_rows=int(window_rows),
    shuffle_windows=int(t.shuffle_windows),
    epochs=int(t.epochs),
    rows_per_epoch=int(t.tokens_per_layer),
    seed=int(config.seed),
  )


def train(
  config,
  reader: train_data.RowReader,
  *,
  layers: list[int],
  layer_positions: list[int],
  n_train_rows: int,
  window_rows: int,
  mean_sq_norms,
  ckpt_dir: str,
  log_dir: str,
  devices=None,
) -> TrainResult:
  """Trains (or resumes) the SAEs of `layers` (store positions `layer_positions`) on rows
  [0, n_train_rows) of `reader`. Returns the final state of the real layers."""
  t = config.sae_training
  d_model = int(reader.read([layer_positions[0]], 0, 1).shape[-1])
  hyper = common.hyper_from_config(config, d_model)
  plan = data_plan(config, n_train_rows, window_rows)
  settings = settings_for(config, hyper, plan)
  tx = train_step.make_optimizer(hyper, settings)
  layout = layer_parallel.make_layout(
    len(layers), t.parallel, int(t.devices), pad=bool(t.pad_layers), devices=devices
  )
  n_pad = layout.n_padded
  valid = layout.valid
  scales = (
    np.asarray(common.input_scale(np.asarray(mean_sq_norms, np.float64)), np.float32)
    if hyper.scales_inputs
    else np.ones(len(layers), np.float32)
  )
  scales_pad = np.asarray([scales[layout.source(i)] for i in range(n_pad)], np.float32)
  root = jax.random.PRNGKey(int(config.seed))
  sae_root = jax.random.fold_in(root, 0x5AE)
  # Keys depend on the layer's identity (block index), not on its slot: a layer trained alone or in
  # any stack starts from the same parameters. A padding slot is an exact clone of the layer whose data
  # it reads (same key, same rows), so it never changes a per-device decision of the step.
  ids = [int(layers[layout.source(i)]) for i in range(n_pad)]
  keys = jnp.stack([jax.random.fold_in(sae_root, l) for l in ids])
  host = jax.device_get(
    jax.jit(jax.vmap(lambda k, sc: train_step.init_state(k, hyper, tx, sc)))(keys, jnp.asarray(scales_pad))
  )
  fp = jsonable(fingerprint(config, d_model, layers))

  ckpt = checkpointing.Checkpointer(ckpt_dir, max_to_keep=int(t.keep_checkpoints))
  start_step = 0
  latest = ckpt.latest_step()
  if latest is not None:
    real = jax.tree_util.tree_map(lambda a: a[: len(layers)], host)
    restored, record = ckpt.restore(latest, real)
    if record.get("fingerprint") != fp:
      ckpt.close()
      raise StoreMismatchError(
        f"the checkpoint in {ckpt_dir} was made with other SAE settings than this config "
        f"(checkpoint: {record.get('fingerprint')}; config: {fp}). Delete {ckpt_dir} and "
        f"{os.path.dirname(log_dir)} to retrain, or use another --workdir."
      )
    # Padding slots are clones of their source layer (see above), so they are restored as such.
    src = np.asarray([layout.source(i) for i in range(n_pad)])
    host = jax.tree_util.tree_map(lambda r: np.asarray(r)[src], restored)
    start_step = int(record["step"])
    logging.info(
      "resuming SAE training from step %d of %d (%s)",
      start_step,
      plan.total_steps,
      record.get("data_position"),
    )

  # With several processes each reads only its own devices' layers (layer_parallel.local_indices).
  device_sources = [[layer_positions[s] for s in layout.device_sources(d)] for d in layout.local_indices]
  block_step = train_step.make_block_step(hyper, settings, tx)
  step_fn = layout.map_step(block_step)
  metric_writer = writer.MetricWriter(log_dir)
  t_start = time.time()
  tokens_done = 0
  prefetch = train_data.Prefetcher(plan, reader, device_sources, start_step=start_step)
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
            "the activation store for non-finite rows, or lower the L0/L1 coefficient."
          )
        done = step + 1
        # Every process must stop at the same step: the checkpoint save below is collective.
        stop = layout.any_process(bool(preempted)) if layout.multi_process else bool(preempted)
        tokens_done += settings.batch_size
        if done % int(t.log_every) == 0 or done == plan.total_steps or done == start_step + 1:
          now = time.time()
          scalars = _layer_scalars(m, layers, valid)
          scalars["tokens_per_sec_per_layer"] = (
            settings.batch_size * int(t.log_every) / max(now - last_log, 1e-9)
          )
          last_log = now
          metric_writer.write_scalars(done, scalars)
          logging.info(
            "step %d/%d  loss %.4f  fvu %.3f  l0 %.1f  dead %.3f  sparse %.2f",
            done,
            plan.total_steps,
            float(np.mean(loss)),
            float(np.mean(m["fvu"][valid])),
            float(np.mean(m["l0"][valid])),
            float(np.mean(m["dead_fraction"][valid])),
            float(np.mean(m["sparse_path"][valid])),
          )
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
  real = jax.tree_util.tree_map(lambda a: np.asarray(a)[: len(layers)], final)
  return TrainResult(
    state=real,
    steps=plan.total_steps,
    tokens_per_layer=plan.total_steps * settings.batch_size,
    seconds=time.time() - t_start,
    layout=f"{layout.mode} x{layout.n_devices} "
    f"({layout.per_device} layers/device, {n_pad - len(layers)} padding)",
    sparse_backend=sparse_backend_name(hyper),
  )


def _data_thresholds(hyper, host, layout, blocks) -> np.ndarray:
  """JumpReLU thresholds from the first batch (config sae.threshold_init_l0) for this process's slots
  (blocks of `layout.local_indices`), one slot at a time."""
  fn = jax.jit(
    lambda p, x, s: common.data_thresholds(
      common.preact(hyper, p, s * x.astype(jnp.float32)), hyper.threshold_init_l0
    )
  )
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
  return f"sparse ({kernels.backend()}), capacity {hyper.sparse_capacity}/token"


def _save(ckpt, layout, states, step, plan, fp, layers, config):
  host = layout.get(states)
  real = jax.tree_util.tree_map(lambda a: np.asarray(a)[: len(layers)], host)
  record = {
    "step": int(step),
    "data_position": plan.position(step),
    "fingerprint": fp,
    "layers": [int(l) for l in layers],
    "total_steps": plan.total_steps,
    "rng": {"seed": int(config.seed), "sae_key_fold": 0x5AE},
  }
  ckpt.save(step, real, record)


def _layer_scalars(m: dict, layers, valid) -> dict:
  out = {}
  for key, values in m.items():
    vals = np.asarray(values)[valid]
    out[f"mean/{key}"] = float(np.mean(vals))
    for layer, v in zip(layers, vals):
      out[f"layer_{layer:02d}/{key}"] = float(v)
  return out
