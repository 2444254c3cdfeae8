"""Command-line entry point: runs the pipeline stages for one config (also `ghosttrack run|plan|verify`).

  python -m ghosttrack_jax.main --config=configs/smollm2_135m.py --workdir=runs/smollm2 \
      [--config.sae.width=4608 ...] [--stages=extract,train] [--plan] [--verify]

Every stage skips itself when its outputs are complete and resumes when they are half written, so
rerunning the same command after a kill or a preemption continues where it stopped. One run at a time
per workdir (runtime.workdir_lock): a second one is refused, naming the first.

Exit statuses: 0 done; 2 an error the message explains (bad config or input, a busy workdir, a damaged
output, a full disk, a workdir that cannot be written); 75 stopped by SIGTERM (preemption: rerun to
resume); 1 a bug (a traceback).
"""

import importlib.util
import logging
import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from ghosttrack_jax import config_lib, pipeline
from ghosttrack_jax.errors import GhostTrackError
from ghosttrack_jax.runtime import atomic_io, checkpointing, multihost, workdir_lock
from ghosttrack_jax.tools import command_line, planner, verify

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file in configs/ (its get_config()).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (cache/, checkpoints/, results/).")
_STAGES = flags.DEFINE_list(
  "stages",
  None,
  "Comma-separated stages to run (default: all): extract,train,answer,track,detect,evaluate,report.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", None, "Call jax.distributed.initialize() (default: when run under srun with several tasks)."
)
flags.mark_flags_as_required(["config", "workdir"])


_VERIFY = flags.DEFINE_bool(
  "verify",
  False,
  "Check every finished output of the run against the checksums its stage recorded (the activation store "
  "also against the config, and the SAE checkpoints), run nothing, and exit with status 2 when one is "
  "damaged.",
)
_PLAN = flags.DEFINE_bool(
  "plan", False, "Print what the run will need (memory, disk, batch sizes, time) and exit."
)
_PLAN_DEVICES = flags.DEFINE_integer(
  "plan_devices",
  None,
  "--plan: devices the layers are spread over (default: config.sae_training."
  "devices, else every device of this process; e.g. 4 for a 4-GPU node).",
)
_PLAN_DEVICE_MEMORY = flags.DEFINE_float(
  "plan_device_memory_gib", None, "--plan: memory of one device in GiB (default: detected)."
)
_PLAN_DEVICE_KIND = flags.DEFINE_string(
  "plan_device_kind",
  None,
  "--plan: the target's accelerator (a100, a100-40gb, a100-80gb, h100-80gb): its memory and a "
  "roofline time estimate instead of measurements on this machine.",
)
_PLAN_IO = flags.DEFINE_float(
  "plan_io_gbps", None, "--plan: the node's store read/write bandwidth in GB/s (default 0.5)."
)
_PLAN_MEASURE = flags.DEFINE_bool(
  "plan_measure",
  True,
  "--plan: time a proxy transformer block and SAE step on this machine's first device for the time estimate.",
)


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return multihost.under_srun_with_several_tasks()


def _plan(config, workdir: str, stages) -> None:
  kwargs = {
    "stages": stages,
    "n_devices": _PLAN_DEVICES.value,
    "device_memory_gib": _PLAN_DEVICE_MEMORY.value,
    "measure": _PLAN_MEASURE.value,
    "device_kind": _PLAN_DEVICE_KIND.value,
    "io_gbps": _PLAN_IO.value,
  }
  print(planner.format_plan(planner.make_plan(config, workdir, **kwargs)))  # the CLI's output
  presets = _presets(config)
  if presets:
    print(planner.compare_presets(presets, workdir, **kwargs))


def _presets(config) -> dict:
  """{argument: config} of every preset of the --config file (its PRESETS), with the command line's
  overrides applied to each; {} for a file without presets."""
  path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]  # without the argument
  spec = importlib.util.spec_from_file_location("config_presets", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not getattr(module, "PRESETS", None):
    return {}
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  out = {}
  for arg in module.PRESETS:
    c = module.get_config(arg)
    for key, value in _flatten(overrides):
      node = c
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = value
    out[arg] = c
  del config
  return out


def _flatten(d: dict, prefix: str = ""):
  for key, value in d.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _stop_on_sigterm(signum, frame) -> None:
  """SIGTERM outside SAE training (whose loop checkpoints first): stop at once with the "try again"
  status. Every write is atomic, so what is finished stays and the same command resumes."""
  del frame
  logging.warning(
    "received signal %d: stopping; finished outputs are kept, rerun the same command to resume", signum
  )
  raise SystemExit(checkpointing.EXIT_PREEMPTED)


def _run(config, workdir: str, stages) -> None:
  """The stages, holding the workdir's lock (on process 0; the others are its own job's processes)."""
  if not multihost.is_primary():
    pipeline.run(config, workdir, stages)
    return
  with workdir_lock.hold(workdir):
    removed = atomic_io.remove_temporaries(workdir)
    if removed:
      logging.info("removed %d temporary file(s) that an interrupted run left", len(removed))
    pipeline.run(config, workdir, stages)


def main(argv):
  del argv

  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  logging.getLogger().setLevel(logging.INFO)
  command_line.quiet_libraries()
  config = _CONFIG.value
  stages = _STAGES.value or list(pipeline.STAGES)
  workdir = _WORKDIR.value
  try:
    unknown = [s for s in stages if s not in pipeline.STAGES]
    if unknown:
      raise GhostTrackError(f"unknown stage(s) {unknown}: choose from {list(pipeline.STAGES)}")
    # Every field, and the input files of the stages to run (none for --verify, which runs no stage),
    # and for a run a workdir that can be written.
    run_stages = () if _VERIFY.value else stages
    config_lib.validate(config, run_stages, workdir=None if (_VERIFY.value or _PLAN.value) else workdir)
    if _PLAN.value:
      _plan(config, workdir, stages)
      return
    if _VERIFY.value:
      busy = workdir_lock.holder(workdir)
      if busy is not None:
        logging.warning("a run is writing %s (%s): half-written outputs may show as damaged", workdir, busy)
      findings = verify.verify_all(config, workdir)
      print(verify.format_findings(findings))  # the CLI's output
      if verify.failed(findings):
        sys.exit(command_line.EXIT_ERROR)
      return
    if _wants_distributed():
      multihost.initialize()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _run(config, workdir, stages)
  except Exception as e:  # noqa: BLE001  (one line for what the user can fix; a bug keeps its traceback)
    line = command_line.error_line(e, workdir)
    if line is None:
      raise
    logging.error("%s", line)
    sys.exit(command_line.EXIT_ERROR)


if __name__ == "__main__":
  app.run(main, flags_parser=command_line.parse_flags)
