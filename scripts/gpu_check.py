"""The GPU check of the accelerator path (scripts/gpu_check.sh runs it; NOT YET RUN ON A GPU).

  python scripts/gpu_check.py [--out DIR] [--smoke]

On a machine with a GPU, from the repository root, it records in DIR/gpu_check.jsonl (and prints):
  devices   kind, memory limit, platform, jax version;
  runs      configs/tiny.py and a GPT-2-small-shaped random model (12 blocks of 768, SAE width 4096,
            batch 4096) through `main --stages=extract,train`: extraction tokens/s, SAE step time,
            rows/s per layer, the fraction of the loop the host waited for input (the device then has
            nothing queued: the input-wait fraction of the device), and beside them `--plan`'s estimate
            for the same config measured on this machine;
  steps     the trainer's own step programs (train.loop.StepFunctions) at GPT-2-medium shapes (6 layers
            of 1024 -> 5120) on one device: dense JumpReLU at batch 4096 and 128, dense TopK with AuxK
            off/on, and the sparse path's XLA fallback at 4096: compile time, XLA memory_analysis
            against the planner's train peak, ms/step with the host running ahead.
Each section records its own error and the next one runs. --smoke shrinks everything so the script
itself can be tested on CPU (tests/tools/test_gpu_check.py).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ghosttrack_jax import config_lib  # noqa: E402
from ghosttrack_jax.runtime import layer_parallel  # noqa: E402
from ghosttrack_jax.sae import registry  # noqa: E402
from ghosttrack_jax.tools import planner  # noqa: E402
from ghosttrack_jax.train import loop as train_loop  # noqa: E402
from ghosttrack_jax.train import step as train_step  # noqa: E402

_LOG = None


def emit(**record):
  record["t"] = round(time.time(), 1)
  line = json.dumps(record, default=str)
  print(line, flush=True)
  _LOG.write(line + "\n")
  _LOG.flush()


def guarded(name, fn, *args):
  t0 = time.time()
  try:
    fn(*args)
  except Exception as e:  # noqa: BLE001  (recorded; the next section runs)
    emit(section=name, error=f"{type(e).__name__}: {str(e)[:800]}", traceback=traceback.format_exc()[-2000:])
  emit(section=name, seconds=round(time.time() - t0, 1))


def devices():
  d = jax.devices()[0]
  stats = d.memory_stats() or {}
  emit(
    section="devices",
    jax=jax.__version__,
    platform=d.platform,
    kind=d.device_kind,
    count=jax.device_count(),
    bytes_limit=stats.get("bytes_limit"),
  )


def _main(args, env=None):
  cmd = [sys.executable, "-m", "ghosttrack_jax.main", *args]
  p = subprocess.run(
    cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
  )
  return p.returncode, p.stdout, p.stderr


def _number(pattern, text, cast=float):
  m = re.search(pattern, text)
  return cast(m.group(1).replace(",", "")) if m else None


def run_case(name: str, flags: list, out: str):
  workdir = os.path.join(out, f"work_{name}")
  base = [f"--config={os.path.join(REPO, 'configs', 'tiny.py')}", f"--workdir={workdir}", *flags]
  t0 = time.time()
  code, _, log = _main([*base, "--stages=extract,train", "--config.sae_training.eval_ce=false"])
  wall = time.time() - t0
  with open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8") as f:
    f.write(log)
  if code:
    raise RuntimeError(f"{name}: the pipeline exited with {code}:\n{log[-3000:]}")
  m = re.search(
    r"train loop: (\d+) steps in ([\d.]+) s; waited for input ([\d.]+)%, for the device ([\d.]+)%", log
  )
  steps, loop_s, input_wait, device_wait = (
    int(m.group(1)),
    float(m.group(2)),
    float(m.group(3)),
    float(m.group(4)),
  )
  batch = _number(r"--config.sae_training.batch_size=(\d+)", " ".join(flags), int) or 256
  record = {
    "section": "runs",
    "case": name,
    "wall_s": round(wall, 1),
    "extract_tokens_per_s": _number(r"\(([\d.]+) tokens/s\) on process", log),
    "extract_stage_s": _number(r"=== stage extract finished in ([\d.]+) s", log),
    "train_stage_s": _number(r"=== stage train finished in ([\d.]+) s", log),
    "train_steps": steps,
    "step_ms": round(1e3 * loop_s / max(steps, 1), 3),
    "rows_per_s_per_layer": round(batch * steps / max(loop_s, 1e-9)),
    "device_input_wait_fraction": input_wait / 100,
    "host_waits_for_device_fraction": device_wait / 100,
  }
  code, plan, err = _main([*base, "--plan", "--stages=extract,train"])
  if code == 0:
    record["plan_extract"] = _number(r"\n  extract\s+~(.+)", plan, str)
    record["plan_train"] = _number(r"\n  train\s+~(.+)", plan, str)
    record["plan_train_peak"] = _number(r"\n  train\s+([\d.]+ \w+)\s+\(", plan, str)
  else:
    record["plan_error"] = err[-500:]
  emit(**record)


def _step_case(arch, backward, batch, layers, d, m, platform):
  c = config_lib.base_config()  # the hyper-parameters as the trainer builds them
  c.sae.arch, c.sae.width = arch, m
  c.sae_training.batch_size = batch
  sae = train_step.for_platform(registry.from_config(c, d), backward, platform)
  settings = train_step.Settings(7e-5, 1000, 0.0, 100_000, 5_000, 20, 1.0, batch)
  tx = train_step.make_optimizer(sae, settings)
  layout = layer_parallel.make_layout(layers, "pmap", devices=jax.devices()[:1])
  fns = train_loop.StepFunctions(layout, sae, settings, tx, "host")
  keys = jax.random.split(jax.random.PRNGKey(0), layers)
  host = jax.device_get(jax.jit(jax.vmap(lambda k: train_step.init_state(k, sae, tx, 1.0)))(keys))
  carry = (layout.put(host), layout.put(train_loop.initial_health(layers, host.fired_ago)))
  x = np.asarray(np.random.default_rng(0).standard_normal((layers, batch, d)) / np.sqrt(d), jnp.bfloat16)
  return sae, fns, carry, layout.put_blocks([x])


def steps(smoke: bool):
  layers, d, m = (2, 64, 256) if smoke else (6, 1024, 5120)
  big = 256 if smoke else 4096
  platform = jax.devices()[0].platform
  n = 3 if smoke else 30
  for arch, backward, batch, variant in (
    ("jumprelu", "dense", big, None),
    ("jumprelu", "dense", 128, None),
    ("topk", "dense", big, "off"),
    ("topk", "dense", big, "on"),
    ("jumprelu", "sparse", big, None),
  ):
    case = f"{arch} {backward} batch {batch}" + (f" AuxK {variant}" if variant else "")
    try:
      sae, fns, carry, x = _step_case(arch, backward, batch, layers, d, m, platform)
      name = variant or ("switch" if fns.choice == "switch" else "off")
      fn = fns[name]
      t0 = time.time()
      compiled = fn.lower(carry, x).compile()
      compile_s = time.time() - t0
      mem = compiled.memory_analysis()
      total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
        if mem
        else None
      )
      carry, metrics = fn(carry, x)
      jax.block_until_ready(metrics)
      t0 = time.perf_counter()
      for _ in range(n):
        carry, metrics = fn(carry, x)
      jax.block_until_ready(metrics)
      ms = 1e3 * (time.perf_counter() - t0) / n
      plan_peak = planner.train_peak(d, m, layers, batch)
      if sae.sparse_capacity and platform != "cpu":
        plan_peak += planner.sparse_xla_extra(sae, layers, batch)
      emit(
        section="steps",
        case=case,
        compile_s=round(compile_s, 1),
        xla_bytes=total,
        planner_train_peak_bytes=plan_peak,
        ms_per_step=round(ms, 3),
        rows_per_s=round(batch / ms * 1e3),
        sparse_path=float(np.mean(jax.device_get(metrics["sparse_path"]))),
      )
    except Exception as e:  # noqa: BLE001  (an out-of-memory case is a result)
      emit(section="steps", case=case, error=f"{type(e).__name__}: {str(e)[:600]}")


def main():
  global _LOG
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default=os.environ.get("OUT", os.path.join(REPO, "runs", "gpu_check")))
  ap.add_argument("--smoke", action="store_true", help="CPU-sized: checks the script, not a GPU")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  _LOG = open(os.path.join(args.out, "gpu_check.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
  emit(section="start", argv=sys.argv, smoke=args.smoke)
  guarded("devices", devices)
  guarded("runs", run_case, "tiny", [], args.out)
  if args.smoke:
    small = ["--config.model.random.n_layer=3", "--config.sae_training.batch_size=128"]
  else:
    small = [
      "--config.model.random.n_layer=12",
      "--config.model.random.d_model=768",
      "--config.model.random.n_head=12",
      "--config.data.seq_len=256",
      "--config.data.n_tokens=500000",
      "--config.extract.batch_size=64",
      "--config.sae.width=4096",
      "--config.sae_training.batch_size=4096",
      "--config.sae_training.epochs=2",
      "--config.sae_training.log_every=50",
      "--config.sae_training.checkpoint_every=1000",
    ]
  guarded("runs", run_case, "gpt2_small_shaped", small, args.out)
  guarded("steps", steps, args.smoke)
  emit(section="end")


if __name__ == "__main__":
  main()
