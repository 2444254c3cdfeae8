"""The SAE train loop on the default shape beside its encoder bound, measured in the same run, and where the
seconds of a step go.

  .venv/bin/python -m benchmarks.train_loop                          # the default run's store, 60 steps
  .venv/bin/python -m benchmarks.train_loop --steps 0 --profile      # the whole plan, and the breakdown
  .venv/bin/python -m benchmarks.train_loop --config configs/tiny.py --synthetic --steps 4 --profile

Measured, in one process:
  bound     the encoder's forward and its dense weight gradient, 4 * d_model * width FLOPs per layer-token
            (the only work of a TopK step that is dense as written: the decoder is sparse, and so could
            the weight gradient be), at the fp32 rate of that matmul stacked over the layers as the step
            runs it ([L, batch, d] x [L, d, width]), measured now;
  loop      train.loop.train as the train stage calls it, on the store of --workdir (read only; or a
            synthetic store of the config's shape with --synthetic), checkpoints in a temporary folder:
            layer-tokens/s between its first logged step (after compilation) and its last, and the
            loop's own accounting (input wait, device wait, fetches);
  profile   (--profile) the parts of one step on a resident batch of that store, each jitted alone and
            timed best-of-N: the whole step as the loop runs it, the encoder forward, TopK selection
            (the C++ kernel, lax.top_k, lax.approx_max_k), the loss forward and backward, and the
            optimizer with the decoder constraint.
The loop figure is the result; the profile says where the rest goes.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

from benchmarks import harness
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, layer_parallel, paths
from ghosttrack_jax.sae import common, registry, sparse
from ghosttrack_jax.train import loop as train_loop
from ghosttrack_jax.train import step as train_step

REPO = harness.REPO


def synthetic_store(path: str, config, rows: int) -> store_lib.ActivationStore:
  """A complete store of random bf16 rows with the config's layer count and width (random model shapes)."""
  from ghosttrack_jax.lm import shapes  # noqa: PLC0415

  a = shapes.architecture(config.model)
  L, D, chunk = a.n_layers, a.d_model, int(config.extract.chunk_rows)
  rows = max(chunk, rows // chunk * chunk)
  acts = store_lib.create_array(os.path.join(path, "activations"), [L, rows, D], "bfloat16", [1, chunk, D])
  rng = np.random.default_rng(0)
  crcs = np.zeros((L, rows // chunk), np.uint32)
  for layer in range(L):
    for c in range(rows // chunk):
      block = (rng.standard_normal((chunk, D), np.float32) * (1 + layer)).astype(ml_dtypes.bfloat16)
      acts[layer, c * chunk : (c + 1) * chunk].write(block).result()
      crcs[layer, c] = store_lib.crc32(block)
  seq = int(config.data.seq_len)
  windows = rows // (seq - 1)
  for name in store_lib.TOKEN_ARRAYS:
    arr = store_lib.create_array(os.path.join(path, name), [windows, seq], "int32", [windows, seq])
    arr.write(np.zeros((windows, seq), np.int32)).result()
  meta = {
    "model": config.model.name,
    "layers": list(range(L)),
    "d_model": D,
    "dtype": "bfloat16",
    "seq_len": seq,
    "n_windows": windows,
    "n_rows": rows,
    "layer_stats": [{"mean_sq_norm": float(D * (1 + l) ** 2)} for l in range(L)],
    "format": store_lib.FORMAT,
    "checksums_sha256": store_lib.write_checksums(path, crcs),
    "token_checksums": store_lib.token_checksums(path),
  }
  atomic_io.atomic_write_json(os.path.join(path, store_lib.META), meta)
  atomic_io.atomic_write_json(os.path.join(path, store_lib.COMPLETE), {})
  return store_lib.ActivationStore.open(path)


def encoder_bound(n_layers: int, batch: int, d: int, width: int) -> tuple[float, float]:
  """(layer-tokens/s, GFLOP/s): the stacked encoder matmul's measured rate over 4*d*width per token."""
  gflops = harness.matmul_gflops(batch, d, width, batch=n_layers)
  return gflops * 1e9 / (4 * d * width), gflops


def run_loop(config, store, steps: int, tmp: str) -> dict:
  t = config.sae_training
  n_eval_windows = max(1, int(round(t.eval_fraction * store.n_windows)))
  n_train_rows = (store.n_windows - n_eval_windows) * store.rows_per_window
  if steps:  # one epoch of `steps` batches (the schedule changes with it, the step's work does not)
    t.epochs, t.tokens_per_layer = 1, steps * int(t.batch_size)
    t.log_every = max(1, min(int(t.log_every), steps // 4))
  log_dir = os.path.join(tmp, "log")
  result = train_loop.train(
    config,
    store,
    layers=store.layers,
    layer_positions=list(range(len(store.layers))),
    n_train_rows=n_train_rows,
    window_rows=store.chunk_rows,
    mean_sq_norms=store.mean_sq_norm(),
    ckpt_dir=os.path.join(tmp, "ckpt"),
    log_dir=log_dir,
  )
  return {
    "steps": result.steps,
    "layer_tokens_per_s": steady_rate(log_dir, int(t.batch_size) * len(store.layers)),
    "stats": result.loop_stats,
    "seconds": result.seconds,
  }


def steady_rate(log_dir: str, tokens_per_step: int) -> float:
  """Layer-tokens/s between the first logged step (compilation included before it) and the last."""
  with open(os.path.join(log_dir, "metrics.jsonl"), encoding="utf-8") as f:
    logs = [json.loads(line) for line in f if '"tokens_per_sec_per_layer"' in line]
  first, last = logs[0], logs[-1]
  if last["step"] == first["step"]:
    return 0.0
  return (last["step"] - first["step"]) * tokens_per_step / max(last["time"] - first["time"], 1e-9)


def run_stage(config, workdir: str) -> dict:
  """The train stage as `make run` runs it (loop, held-out evaluation, export) on `workdir`."""
  from ghosttrack_jax.train import quality  # noqa: PLC0415
  from ghosttrack_jax.train import stage as train_stage  # noqa: PLC0415

  mp = paths.for_config(config, workdir)
  t0 = time.perf_counter()
  train_stage.run(config, workdir)
  seconds = time.perf_counter() - t0
  table = quality.load_table(mp.sae_results)
  rows = table["layers"]
  loop_s = float(table["train_seconds"])
  tokens_per_step = int(config.sae_training.batch_size) * len(rows)
  return {
    "steps": int(table["steps"]),
    "layer_tokens_per_s": steady_rate(os.path.join(mp.sae_results, "train_log"), tokens_per_step),
    "seconds": loop_s,
    "stage_seconds": seconds,
    "evaluation_seconds": seconds - loop_s,
    "table": os.path.join(mp.sae_results, "metrics.md"),
    "fvu_robust": [round(r["fvu_robust"], 3) for r in rows],
  }


def _best(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def profile(config, store, repeats: int) -> list[tuple[str, float]]:
  """Seconds of the parts of one step at the config's shapes, on the store's first rows."""
  t = config.sae_training
  L, B = len(store.layers), int(t.batch_size)
  arch = train_step.for_platform(registry.from_config(config, store.d_model), t.backward, "cpu")
  s = train_step.Settings(float(t.lr), 50, 0.2, 1000, 1000, 1, float(t.grad_clip), B)
  tx = train_step.make_optimizer(arch, s)
  scales = np.asarray(1 / np.sqrt(store.mean_sq_norm()), np.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), L)
  states = jax.jit(jax.vmap(lambda k, sc: train_step.init_state(k, arch, tx, sc)))(keys, scales)
  x_raw = jnp.asarray(store.read(list(range(L)), 0, B))  # bf16 [L, B, D], as the pipeline puts it
  layout = layer_parallel.make_layout(L, "pmap", devices=jax.devices()[:1])
  fns = train_loop.StepFunctions(layout, arch, s, tx, "host")
  carry = (layout.put(jax.device_get(states)), layout.put(train_loop.initial_health(L, np.zeros((L, 1)))))
  x_dev = layout.put_blocks([np.asarray(x_raw)])

  held = [carry]

  def whole(x):  # the state is donated: each call takes the previous one's
    held[0], out = fns[fns.pick(np.zeros(L, np.int32), 1, B)](held[0], x)
    return out["loss"]

  x = x_raw.astype(jnp.float32) * scales[:, None, None]
  preact = jax.jit(jax.vmap(arch.preact))
  pre = preact(states.params, x)
  ctx = {"step": jnp.asarray(100, jnp.int32), "dead": jnp.zeros((arch.width,), bool), "use_aux": False}
  use_sparse = arch.sparse_capacity > 0

  def loss_and_grads(params, x, pre):
    def one(p, xx, pr):
      thr = arch.selection_threshold(p, pr) if arch.entries_per_token is None else None
      coo = sparse.coo_above(pr, thr, B * arch.sparse_capacity)[0] if thr is not None and use_sparse else None
      entries = arch.entries(p, pr, thr, coo, use_sparse)
      return jax.value_and_grad(lambda q: arch.loss(q, xx, pr, ctx, entries)[0])(p)

    return jax.vmap(one)(params, x, pre)

  grads = jax.jit(loss_and_grads)(states.params, x, pre)[1]

  def optimizer(params, opt_state, grads):
    def one(p, o, g):
      u, o = tx.update(g, o, p)
      return common.renormalise_decoder(optax.apply_updates(p, u)), o

    return jax.vmap(one)(params, opt_state, grads)

  k = arch.entries_per_token or 64  # the selection a TopK step makes (64 for the others, for scale)
  parts = [
    ("whole step (the loop's program)", _best(whole, x_dev, repeats=repeats)),
    ("encoder forward (x W_enc + b_enc)", _best(preact, states.params, x, repeats=repeats)),
    (
      "TopK selection, C++ kernel (coo_topk)",
      _best(jax.jit(jax.vmap(lambda p: sparse.coo_topk(p, k))), pre, repeats=repeats),
    ),
    ("TopK selection, lax.top_k", _best(jax.jit(lambda p: jax.lax.top_k(p, k)), pre, repeats=repeats)),
    (
      "TopK selection, lax.approx_max_k",
      _best(jax.jit(lambda p: jax.lax.approx_max_k(p, k)), pre, repeats=repeats),
    ),
    ("loss forward + backward", _best(jax.jit(loss_and_grads), states.params, x, pre, repeats=repeats)),
    (
      "optimizer + decoder constraint",
      _best(jax.jit(optimizer), states.params, states.opt_state, grads, repeats=repeats),
    ),
  ]
  return parts


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/smollm2_135m.py", help="path[:preset]")
  p.add_argument("--workdir", default="runs/smollm2_135m", help="the run whose store is read (read only)")
  p.add_argument("--synthetic", action="store_true", help="a random store of the config's shape instead")
  p.add_argument("--steps", type=int, default=60, help="loop steps; 0 = the config's whole plan")
  p.add_argument(
    "--stage",
    action="store_true",
    help="run the whole train stage on --workdir instead (it writes there: loop, evaluation, export)",
  )
  p.add_argument("--profile", action="store_true", help="also time the parts of one step")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--set", action="append", default=[], help="config override, field=python literal")
  args = p.parse_args(argv)
  config = harness.load_config(args.config, args.set)
  load0 = harness.load()
  with tempfile.TemporaryDirectory() as tmp:
    if args.synthetic:
      rows = (args.steps or 64) * int(config.sae_training.batch_size) + 4 * int(config.extract.chunk_rows)
      store = synthetic_store(os.path.join(tmp, "store"), config, rows)
    else:
      store = store_lib.ActivationStore.open(paths.for_config(config, args.workdir).hidden_states)
    t = config.sae_training
    L, B, D, M = len(store.layers), int(t.batch_size), store.d_model, int(config.sae.width)
    bound, gflops = encoder_bound(L, B, D, M)
    if args.stage:
      loop = run_stage(config, args.workdir)
    else:
      loop = run_loop(config.copy_and_resolve_references(), store, args.steps, tmp)
    bound_after, gflops_after = encoder_bound(L, B, D, M)
    parts = profile(config, store, args.repeats) if args.profile else []
  if bound_after > bound:  # a shared machine: the better of the two measurements
    bound, gflops = bound_after, gflops_after
  rate = loop["layer_tokens_per_s"]
  lines = [
    f"- command: `python -m benchmarks.train_loop {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(),
    f"- machine: {harness.describe(load0)}",
    f"- shape: {L} layers, d_model {D} -> width {M}, batch {B} tokens, {config.sae.arch} "
    f"(k {config.sae.k}); store {'synthetic' if args.synthetic else store.path}",
    f"- encoder bound: {bound:,.0f} layer-tokens/s (stacked matmul [{L},{B},{D}]x[{L},{D},{M}] at "
    f"{gflops:.0f} GFLOP/s over 4*d*width = {4 * D * M / 1e6:.1f} MFLOP per layer-token)",
    f"- loop: {rate:,.0f} layer-tokens/s = {rate / bound:.0%} of the bound ({loop['steps']} steps, "
    f"{loop['seconds']:.0f} s with compilation)",
  ]
  if "stats" in loop:
    st = loop["stats"]
    lines.append(
      f"- the loop's accounting: waited for input {st['input_wait']:.1f} s, for the device "
      f"{st['device_wait']:.1f} s, fetches {st['fetch']:.1f} s of {st['loop']:.1f} s"
    )
  else:
    lines.append(
      f"- train stage {loop['stage_seconds']:.0f} s, of which held-out evaluation, splicing and export "
      f"{loop['evaluation_seconds']:.0f} s; per-layer quality in {loop['table']}; fvu_robust by layer "
      f"{loop['fvu_robust']}"
    )
  if parts:
    whole = parts[0][1]
    lines.append(f"- profile of one step (best of {args.repeats}; ms, and the share of the whole step):")
    lines += [f"  - {name}: {1e3 * sec:,.1f} ms ({sec / whole:.0%})" for name, sec in parts]
    lines.append(
      f"  - the loop's step time {1e3 * L * B / max(rate, 1e-9):,.1f} ms against the program's "
      f"{1e3 * whole:,.1f} ms: {1e3 * (L * B / max(rate, 1e-9) - whole):,.1f} ms of host work or waiting per step"
    )
  print("\n".join(lines))


if __name__ == "__main__":
  main()
