"""What the benchmarks share: the machine they record beside their figures (CPU, cores, load average), the
commit, the reference rates measured in the same run (the fp32 matmul rate of a given shape), and the
configs they read (`configs/<file>.py[:preset]`, as --config of main takes them)."""

import ast
import importlib.util
import os
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown CPU"


def commit() -> str:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return out + (" (with uncommitted changes)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def load() -> float:
  """The 1-minute load average (figures taken above ~1.5 on the 2 shared cores are not results)."""
  return os.getloadavg()[0]


def describe(load_start: float) -> str:
  import jax  # noqa: PLC0415  (after the benchmark has set its thread variables)

  return (
    f"{cpu_name()}, {os.cpu_count()} visible cores, load average {load_start:.2f} at the start and "
    f"{load():.2f} at the end; jax {jax.__version__} on {jax.default_backend()}; commit {commit()}"
  )


def matmul_gflops(m: int, k: int, n: int, batch: int = 0, repeats: int = 5) -> float:
  """Best fp32 GFLOP/s of a jitted [batch,] [m, k] x [k, n] matmul (a stacked one when batch > 0, as the
  SAE trainer runs its layers), after a compiling call."""
  import jax  # noqa: PLC0415

  lead = (batch,) if batch else ()
  a = jax.random.normal(jax.random.PRNGKey(0), lead + (m, k))
  b = jax.random.normal(jax.random.PRNGKey(1), lead + (k, n))
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * max(batch, 1) * m * k * n / best / 1e9


def load_config(spec: str, overrides=()):
  """configs/<file>.py[:preset] (relative to the checkout, or a path) -> its get_config(preset), with
  `overrides` ("field.path=python literal", as --set gives them) applied."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in overrides:
    field, value = item.split("=", 1)
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = ast.literal_eval(value)
  return config
