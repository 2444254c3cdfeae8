"""The host training loop of the layer-stacked SAE trainer.

`train(...)` initialises (or resumes from an Orbax checkpoint) the stacked train state, feeds batches from
the input pipeline (train.data.Pipeline: already on the devices) through the mapped step (train.step,
runtime.layer_parallel), logs metrics every `log_every` steps, checkpoints every `checkpoint_every`
steps and on SIGTERM (then exit status 75).

No host round trip inside the loop: metrics, the NaN/Inf flag (`with_health`) and the dead-latent
counters stay on the device and are fetched in one transfer at log and checkpoint steps; a NaN/Inf
found there stops with NonFiniteLossError naming the first bad step, before any checkpoint of the bad
state (the last good one is kept). At most `max_in_flight` steps run ahead of the host. With several
processes the SIGTERM agreement (a collective) runs every `preemption_check_every` steps.
"""

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import NonFiniteLossError, StoreMismatchError
from ghosttrack_jax.runtime import checkpointing, layer_parallel, progress, writer
from ghosttrack_jax.sae import common, kernels, registry
from ghosttrack_jax.train import data as train_data
from ghosttrack_jax.train import step as train_step


def settings_for(config, arch, plan: train_data.DataPlan) -> train_step.Settings:
  t = config.sae_training
  return train_step.Settings(
    lr=train_step.peak_lr(config, arch),
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
    # how the input arrives and the host loop runs: never changes the trained parameters
    "prefetch_batches",
    "max_in_flight",
    "read_threads",
    "gather_threads",
    "preemption_check_every",
    "transfer_guard",
    "verify_reads",
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
  loop_stats: dict  # seconds of the loop: input_wait, device_wait, fetch, loop; and steps run


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


def with_health(block_step: Callable) -> Callable:
  """block_step(states, x) -> (states, metrics) as ((states, health), x) -> ((states, health), metrics).

  health, per slot, stays on the device between fetches: "first_bad" (int32, -1 while the loss has been
  finite, else the first step at which it was not) and "max_fired_ago" (int32, the largest dead-latent
  counter, which lets the host choose the AuxK variant without a conditional on the device).
  """

  def step(carry, x):
    states, health = carry
    step_no = states.step  # [l]: the step being taken
    states, metrics = block_step(states, x)
    bad = ~jnp.isfinite(metrics["loss"])
    first_bad = jnp.where((health["first_bad"] < 0) & bad, step_no, health["first_bad"])
    return (states, {"first_bad": first_bad, "max_fired_ago": jnp.max(states.fired_ago, axis=-1)}), metrics

  return step


def initial_health(n_slots: int, fired_ago: np.ndarray) -> dict:
  return {
    "first_bad": np.full((n_slots,), -1, np.int32),
    "max_fired_ago": np.asarray(fired_ago, np.int32).max(axis=-1),
  }


class StepFunctions:
  """The mapped step (with `with_health`) for each variant the host may choose between.

  choice "host" (what the trainer uses): no data-dependent AuxK conditional in the program; `pick`
  chooses the AuxK variant that is exact until the next fetch (see train.step). "switch": one program,
  AuxK on/off a `lax.switch` on the device (the reference the tests compare "host" with).
  """

  def __init__(self, layout, arch, settings, tx, choice: str):
    if choice not in ("switch", "host"):
      raise ValueError(f"variant choice {choice!r}: use 'switch' or 'host'")
    self.arch = arch
    self.choice = choice if arch.uses_aux_k else "switch"
    names = ("switch",) if self.choice == "switch" else ("off", "on")
    self._fns = {
      n: layout.map_step(with_health(train_step.make_block_step(arch, settings, tx, aux=n))) for n in names
    }

  def pick(self, max_fired_ago, steps_ahead: int, batch_size: int) -> str:
    if self.choice == "switch":
      return "switch"
    top = int(np.max(np.asarray(max_fired_ago))) if np.size(max_fired_ago) else 0
    return train_step.aux_variant_for(self.arch, top, steps_ahead, batch_size)

  def __getitem__(self, name: str) -> Callable:
    return self._fns[name]


def _is_fetch_step(done: int, t, total: int, start: int) -> bool:
  return (
    done % int(t.log_every) == 0 or done % int(t.checkpoint_every) == 0 or done == total or done == start + 1
  )


def _steps_to_next_fetch(done: int, t, total: int) -> int:
  nxt = min(
    (done // int(t.log_every) + 1) * int(t.log_every),
    (done // int(t.checkpoint_every) + 1) * int(t.checkpoint_every),
    total,
  )
  return max(1, nxt - done)


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
  variant_choice: str | None = None,
) -> TrainResult:
  """Trains (or resumes) the SAEs of `layers` (store positions `layer_positions`) on rows
  [0, n_train_rows) of `reader`. Returns the final state of the real layers.

  variant_choice: "switch" or "host" (see StepFunctions); None = "host".
  """
  t = config.sae_training
  d_model = int(reader.read([layer_positions[0]], 0, 1).shape[-1])
  layout = layer_parallel.make_layout(
    len(layers), t.parallel, int(t.devices), pad=bool(t.pad_layers), devices=devices
  )
  arch = train_step.for_platform(registry.from_config(config, d_model), t.backward, layout.platform)
  plan = data_plan(config, n_train_rows, window_rows)
  settings = settings_for(config, arch, plan)
  tx = train_step.make_optimizer(arch, settings)
  n_pad = layout.n_padded
  valid = layout.valid
  scales = (
    np.asarray(common.input_scale(np.asarray(mean_sq_norms, np.float64)), np.float32)
    if arch.scales_inputs
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
    jax.jit(jax.vmap(lambda k, sc: train_step.init_state(k, arch, tx, sc)))(keys, jnp.asarray(scales_pad))
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
  choice = variant_choice or "host"
  steps = StepFunctions(layout, arch, settings, tx, choice)
  max_in_flight = int(t.max_in_flight)
  metric_writer = writer.MetricWriter(
    log_dir, resume_step=start_step, logging_cfg=config.logging, run_config=writer.config_dict(config)
  )
  bar = progress.Progress(plan.total_steps, "train SAEs", "step", initial=start_step)
  t_start = time.time()
  stats = {"input_wait": 0.0, "device_wait": 0.0, "fetch": 0.0, "loop": 0.0, "steps": 0}
  pipeline = train_data.Pipeline(
    plan,
    reader,
    device_sources,
    start_step=start_step,
    put=layout.put_blocks,
    depth=int(t.prefetch_batches),
    in_flight=max_in_flight,
    read_threads=int(t.read_threads),
    gather_threads=int(t.gather_threads),
  )
  in_flight: collections.deque = collections.deque()  # (an output of the step, its batch's ticket)
  step = start_step
  try:
    with checkpointing.preemption_guard() as preempted:
      batches = iter(pipeline)
      first = None
      needs_first = start_step == 0 and plan.total_steps > 0
      if needs_first and (arch.b_dec_from_data or arch.thresholds_from_data):
        first = next(batches)  # its host blocks stay valid until the ticket is released
        batches = _chain([first], batches)
      if first is not None and arch.b_dec_from_data:
        # b_dec starts at the mean of the first batch (see Architecture.b_dec_from_data).
        means = np.concatenate([blk.astype(np.float32).mean(axis=1) for blk in first.host], axis=0)
        means = layout.gather_local_slots(means)  # every slot's mean on every process
        host.params["b_dec"] = (means * scales_pad[:, None]).astype(np.float32)
      if first is not None and arch.thresholds_from_data:
        local = _data_thresholds(arch, host, layout, first.host)
        host.params["threshold"] = layout.gather_local_slots(local)  # every slot, every process
      carry = (layout.put(host), layout.put(initial_health(n_pad, host.fired_ago)))
      variant = steps.pick(
        initial_health(n_pad, host.fired_ago)["max_fired_ago"],
        _steps_to_next_fetch(start_step, t, plan.total_steps),
        settings.batch_size,
      )
      sync_every = int(t.preemption_check_every)
      last_log, last_logged, t_loop = time.time(), start_step, time.perf_counter()
      # The steady state: no implicit host<->device transfer (explicit puts and fetches only);
      # config.sae_training.transfer_guard="disallow" makes any other one an error.
      with jax.transfer_guard(t.transfer_guard):
        while True:
          t0 = time.perf_counter()
          batch = next(batches, None)
          stats["input_wait"] += time.perf_counter() - t0
          if batch is None:
            break
          step = batch.step
          # Steady state: no host<->device transfer but the explicit puts (pipeline) and fetches below.
          carry, metrics = steps[variant](carry, batch.device)
          in_flight.append((metrics["loss"], batch.ticket))
          del batch
          if len(in_flight) > max_in_flight:  # bounds the steps (and put batches) queued on the device
            t0 = time.perf_counter()
            out, ticket = in_flight.popleft()
            out.block_until_ready()  # a wait, not a transfer
            pipeline.release(ticket)
            stats["device_wait"] += time.perf_counter() - t0
          done = step + 1
          stats["steps"] += 1
          bar.update(1)
          # Every process must stop at the same step (the checkpoint save is collective): with several
          # processes they agree every `preemption_check_every` steps, a collective.
          if layout.multi_process:
            stop = done % sync_every == 0 and layout.any_process(bool(preempted))
          else:
            stop = bool(preempted)
          if not (_is_fetch_step(done, t, plan.total_steps, start_step) or stop):
            continue
          t0 = time.perf_counter()
          fetched = layout.get({"metrics": metrics, "health": carry[1]})  # one explicit fetch
          stats["fetch"] += time.perf_counter() - t0
          while in_flight:  # the fetched step has finished, and so have the ones before it
            pipeline.release(in_flight.popleft()[1])
          m, health = fetched["metrics"], fetched["health"]
          first_bad = np.where(valid, health["first_bad"], -1)
          if np.any(first_bad >= 0):
            bad_step = int(first_bad[first_bad >= 0].min())
            bad = [layers[i] for i in np.nonzero(first_bad == bad_step)[0]]
            ckpt.wait()
            raise NonFiniteLossError(
              f"SAE loss became NaN/Inf at step {bad_step} for layer(s) {bad} (found at the fetch after "
              f"step {done}). The last good checkpoint (step {ckpt.latest_step()}) in {ckpt_dir} is "
              "kept. Lower config.sae_training.lr, check the activation store for non-finite rows "
              "(--verify), or lower the L0/L1 coefficient."
            )
          variant = steps.pick(
            health["max_fired_ago"], _steps_to_next_fetch(done, t, plan.total_steps), settings.batch_size
          )
          if done % int(t.log_every) == 0 or done == plan.total_steps or done == start_step + 1:
            now = time.time()
            scalars = _layer_scalars(m, layers, valid)
            scalars["tokens_per_sec_per_layer"] = (
              settings.batch_size * (done - last_logged) / max(now - last_log, 1e-9)
            )
            last_log, last_logged = now, done
            metric_writer.write_scalars(done, scalars)
            bar.update(
              0,
              loss=f"{np.mean(m['loss'][valid]):.4f}",
              fvu=f"{np.mean(m['fvu'][valid]):.3f}",
              l0=f"{np.mean(m['l0'][valid]):.1f}",
              dead=f"{np.mean(m['dead_fraction'][valid]):.3f}",
              layer_tok_s=f"{scalars['tokens_per_sec_per_layer'] * len(layers):,.0f}",
            )
          if done % int(t.checkpoint_every) == 0 or done == plan.total_steps or stop:
            with jax.transfer_guard("allow"):  # Orbax's own transfers
              _save(ckpt, layout, carry[0], done, plan, fp, layers, config)
          if stop:
            ckpt.wait()
            logging.warning("preempted: checkpoint at step %d saved in %s", done, ckpt_dir)
            raise checkpointing.Preempted(done)
      stats["loop"] = time.perf_counter() - t_loop
      final = layout.get(carry[0]) if plan.total_steps > start_step else host
  finally:
    bar.close()
    pipeline.close()
    metric_writer.close()
  if plan.total_steps > start_step:
    ckpt.wait()
  ckpt.close()
  if stats["steps"]:
    logging.info(
      "train loop: %d steps in %.1f s; waited for input %.1f%%, for the device %.1f%%, fetches %.1f%%",
      stats["steps"],
      stats["loop"],
      100 * stats["input_wait"] / max(stats["loop"], 1e-9),
      100 * stats["device_wait"] / max(stats["loop"], 1e-9),
      100 * stats["fetch"] / max(stats["loop"], 1e-9),
    )
  real = jax.tree_util.tree_map(lambda a: np.asarray(a)[: len(layers)], final)
  return TrainResult(
    state=real,
    steps=plan.total_steps,
    tokens_per_layer=plan.total_steps * settings.batch_size,
    seconds=time.time() - t_start,
    layout=f"{layout.mode} x{layout.n_devices} "
    f"({layout.per_device} layers/device, {n_pad - len(layers)} padding)",
    sparse_backend=sparse_backend_name(arch),
    loop_stats=stats,
  )


def _data_thresholds(arch, host, layout, blocks) -> np.ndarray:
  """Thresholds from the first batch (Architecture.initial_thresholds) for this process's slots
  (blocks of `layout.local_indices`), one slot at a time."""
  fn = jax.jit(lambda p, x, s: arch.initial_thresholds(p, s * x.astype(jnp.float32)))
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


def sparse_backend_name(arch) -> str:
  if arch.sparse_capacity <= 0:
    return "dense"
  return f"sparse ({kernels.backend()}), capacity {arch.sparse_capacity}/token"


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
