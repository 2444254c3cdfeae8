"""Several JAX processes (one per GPU, started by `srun`): initialisation, process roles, barriers.

Under `srun` with several tasks every process calls `jax.distributed.initialize()` (it reads the SLURM
step variables; docs/environment.md section 8.1) and then runs the same pipeline (`pipeline.run` decides
which stages every process runs and which only process 0 runs). A process that fails makes
`srun --kill-on-bad-exit` stop the others, and a rerun resumes from the stages' DONE markers and
checkpoints.
"""

import logging
import os
import signal
import time

import jax
from jax._src import distributed  # the coordination-service client (no public API for it)

# The coordination-service barrier takes a timeout in int32 milliseconds (at most ~24.8 days).
_BARRIER_TIMEOUT_S = 14 * 24 * 3600

_initialized = False


def under_srun_with_several_tasks() -> bool:
  """True inside a SLURM job step with more than one task (where `jax.distributed` must start)."""
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ


def initialize() -> None:
  """Joins the multi-process JAX runtime. Must run before any JAX computation; idempotent."""
  global _initialized
  if _initialized:
    return

  # gloo is jax 0.10's default for CPU collectives; setting it keeps older versions working too.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  t0 = time.time()
  jax.distributed.initialize()
  # jax.distributed installs a preemption notifier that swallows SIGTERM (for its own sync points,
  # which we do not use). Restore "SIGTERM stops the process": stages resume after a requeue, and the
  # SAE trainer installs its own handler that checkpoints first (checkpointing.preemption_guard).
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _initialized = True
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices (%.1f s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    time.time() - t0,
  )


def is_initialized() -> bool:
  return _initialized


def process_index() -> int:
  """This process's index (0 without jax.distributed)."""
  if not _initialized:
    return 0
  return jax.process_index()


def process_count() -> int:
  if not _initialized:
    return 1
  return jax.process_count()


def is_primary() -> bool:
  """True on the process that writes shared outputs (process 0)."""
  return process_index() == 0


def barrier(name: str, timeout_s: float = _BARRIER_TIMEOUT_S) -> None:
  """Blocks until every process reaches `name` (a no-op in a single process).

  Uses the coordination service, not a device collective, so a process can wait here for hours while
  process 0 runs a stage; each name must be used once per run.
  """
  if process_count() == 1:
    return

  t0 = time.time()
  distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
  waited = time.time() - t0
  if waited > 1:
    logging.info("barrier %s: waited %.1f s", name, waited)
