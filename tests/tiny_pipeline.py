"""Artefacts of one full pipeline run on configs/tiny.py, shared by the tests that need real outputs
(notebooks, dashboard of a real case, planner against actual usage).

The run happens once per test session, in a subprocess started exactly like the README's command, so
its JAX runtime is separate from the test process. Set GHOSTTRACK_TINY_WORKDIR to reuse (or keep) a run:
stages with DONE markers are skipped, so a finished workdir costs nothing the second time.

  @pytest.fixture(scope="session")
  def tiny_run(tmp_path_factory):
    return tiny_pipeline.get(tmp_path_factory)      # (config, workdir)
"""

import importlib.util
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny.py")
# The environment of every tiny run: 2 simulated devices, as each task of the SLURM test has. XLA's CPU
# code (and so the last bits of the results) depends on the device count of the process, and tests
# compare runs bit for bit.
ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
_cache: dict = {}


def load_config():
  """configs/tiny.py's get_config(), as `--config=configs/tiny.py` gives it."""
  spec = importlib.util.spec_from_file_location("tiny_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def set_fields(config, overrides: dict):
  """Sets dotted fields ("a.b": v) of a config; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_config(**overrides):
  """configs/tiny.py with `overrides` ("a.b": v) applied."""
  return set_fields(load_config(), overrides)


def run_pipeline(
  workdir: str, stages: str | None = None, env: dict | None = None, timeout: float = 900, flags: tuple = ()
) -> tuple[float, str]:
  """Runs `python -m ghosttrack_jax.main` on the tiny config; returns (seconds, log). Raises on failure."""
  cmd = [sys.executable, "-m", "ghosttrack_jax.main", f"--config={CONFIG}", f"--workdir={workdir}"]
  if stages:
    cmd.append(f"--stages={stages}")
  cmd += list(flags)
  full_env = {**os.environ, **ENV, **(env or {})}
  t0 = time.time()
  proc = subprocess.run(
    cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
  )
  seconds = time.time() - t0
  if proc.returncode:
    raise RuntimeError(
      f"tiny pipeline failed ({proc.returncode}) after {seconds:.0f} s:\n{proc.stderr[-4000:]}"
    )
  return seconds, proc.stderr


def log() -> str:
  """The stderr log of the session's run (stages skipped on a reused workdir log near-zero times)."""
  return _cache.get("log", "")


def get(tmp_path_factory) -> tuple:
  """(config, workdir) of a finished tiny run; the first call runs the pipeline."""
  if "run" not in _cache:
    workdir = os.environ.get("GHOSTTRACK_TINY_WORKDIR") or str(tmp_path_factory.mktemp("tiny_run"))
    seconds, log = run_pipeline(workdir)
    _cache["run"] = (load_config(), workdir)
    _cache["seconds"], _cache["log"] = seconds, log
  return _cache["run"]
