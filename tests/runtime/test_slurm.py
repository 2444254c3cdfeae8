"""The SLURM wrapper on a real single-node SLURM cluster (scripts/ci_slurm.sh, docs/environment.md §8.2).

The tests submit scripts/slurm/submit.sh (which submits scripts/slurm/ghosttrack.sbatch) on
configs/tiny.py with 2 tasks x 2 simulated CPU devices, i.e. 2 JAX processes and 4 global devices:
  1. the whole pipeline: the trained SAEs equal those of a single-process run, the report exists;
  2. extraction alone: both processes extract their chunk groups into the one store, which is
     identical (rows, tokens, statistics, checksums) to the single-process store;
  3. a preemption (`scontrol requeue`) in the middle of SAE training: the job comes back, resumes from
     the trainer's checkpoint and ends with SAEs equal to an uninterrupted single-process run.
The cluster daemons are stopped by their PID files when the module finishes. Needs root and the Debian
packages slurmctld, slurmd, slurm-client and munge (.ci/run installs them).
"""

import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tiny_pipeline  # tests/ is on sys.path under pytest

from ghosttrack_jax.sae import trained

REPO = tiny_pipeline.REPO
pytestmark = pytest.mark.skipif(
  shutil.which("slurmctld") is None and not os.path.exists("/usr/sbin/slurmctld"),
  reason="slurmctld is not installed: apt-get install --no-install-recommends slurmctld slurmd "
  "slurm-client munge (as .ci/run does)",
)
FINAL_STATES = (
  "COMPLETED",
  "FAILED",
  "CANCELLED",
  "TIMEOUT",
  "NODE_FAIL",
  "OUT_OF_MEMORY",
  "BOOT_FAIL",
  "DEADLINE",
  "PREEMPTED",
)


class Cluster:
  """A started local cluster: runs SLURM client commands with its SLURM_CONF."""

  def __init__(self, root: str):
    self.root = root
    self.env = {**os.environ, "SLURM_CONF": os.path.join(root, "slurm.conf")}
    # The job sets its own XLA_FLAGS (2 devices per task); never leak the test process's setting.
    self.env.pop("XLA_FLAGS", None)

  def run(self, *cmd, check=True) -> str:
    p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=False)
    if check and p.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    return p.stdout

  def job_field(self, job: str, field: str) -> str | None:
    """A field of `scontrol show job` (None once the record is gone, MinJobAge after the end)."""
    out = subprocess.run(
      ["scontrol", "show", "job", "-o", job],
      env=self.env,
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
    ).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None

  def submit(self, run_name: str, workdir: str, log_dir: str, **variables) -> str:
    env = {
      **self.env,
      "MODEL_CONFIG": tiny_pipeline.CONFIG,
      "WORKDIR": workdir,
      "RUN_NAME": run_name,
      "LOG_DIR": log_dir,
      "GPUS_PER_NODE": "0",
      "TASKS_PER_NODE": "2",
      "DEVICES_PER_TASK": "2",
      "CPUS_PER_TASK": "1",
      "TIME_LIMIT": "20",
      "PYTHON": sys.executable,
      **{k: str(v) for k, v in variables.items()},
    }
    p = subprocess.run(
      ["bash", os.path.join(REPO, "scripts", "slurm", "submit.sh")],
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
      check=True,
    )
    return re.search(r"submitted job (\d+)", p.stdout).group(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("slurm"))
  script = os.path.join(REPO, "scripts", "ci_slurm.sh")
  subprocess.run(["bash", script, "start", root], check=True, timeout=120)
  try:
    yield Cluster(root)
  finally:
    subprocess.run(["bash", script, "stop", root], check=False, timeout=120)
    for name in ("slurmctld.pid", "slurmd.pid"):
      assert not os.path.exists(os.path.join(root, "run", name)), f"{name} left behind"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return tiny_pipeline.get(tmp_path_factory)


def _log(log_dir: str, run_name: str, job: str) -> str:
  path = os.path.join(log_dir, f"{run_name}_{job}.out")
  if not os.path.exists(path):
    return ""
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def _wait(cluster: Cluster, job: str, log_dir: str, run_name: str, timeout: float, until=None) -> str:
  """Waits for the job to end (or for `until(log, state)`); returns the log. Fails on timeout."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    state = cluster.job_field(job, "JobState")
    log = _log(log_dir, run_name, job)
    if until is not None and until(log, state):
      return log
    if until is None and (state is None or state in FINAL_STATES):
      return log
    time.sleep(0.5)
  cluster.run("scancel", job, check=False)
  pytest.fail(f"job {job} did not finish within {timeout} s; log:\n{_log(log_dir, run_name, job)[-4000:]}")


def _assert_saes_equal(config, workdir_a: str, workdir_b: str) -> None:
  a = trained.load_trained_saes(config, workdir_a)
  b = trained.load_trained_saes(config, workdir_b)
  assert a.layers == b.layers
  for key in a.params:
    np.testing.assert_array_equal(np.asarray(a.params[key]), np.asarray(b.params[key]), err_msg=key)
  np.testing.assert_array_equal(a.input_scale, b.input_scale)


def test_pipeline_under_srun_equals_single_process(cluster, tiny_run, tmp_path):
  config, reference = tiny_run
  workdir, log_dir = str(tmp_path / "work"), str(tmp_path / "logs")
  t0 = time.time()
  job = cluster.submit("tiny-ci", workdir, log_dir)
  log = _wait(cluster, job, log_dir, "tiny-ci", timeout=900)
  seconds = time.time() - t0
  assert os.path.exists(os.path.join(log_dir, f"tiny-ci_{job}.out"))  # named per run and job id
  assert f"job {job} pipeline exited with 0" in log, log[-4000:]
  assert "process 0 of 2" in log and "process 1 of 2" in log and "4 global devices" in log
  assert "shard_map over the global mesh" in log  # the layers spread over both processes
  _assert_saes_equal(config, workdir, reference)
  from ghosttrack_jax.runtime import paths  # pylint: disable=import-outside-toplevel

  evaluation = paths.for_config(config, workdir).evaluation
  for name in ("report.json", "report.md", "report.html"):
    assert os.path.getsize(os.path.join(evaluation, name)) > 0
  leftovers = [os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs if f.startswith(".tmp-")]
  assert not leftovers, leftovers
  print(f"whole pipeline under SLURM (2 tasks x 2 devices): {seconds:.0f} s")


def test_extraction_on_two_processes_equals_one(cluster, tiny_run, tmp_path):
  from ghosttrack_jax.extract import store as store_lib  # pylint: disable=import-outside-toplevel
  from ghosttrack_jax.runtime import paths  # pylint: disable=import-outside-toplevel

  config, reference = tiny_run
  workdir, log_dir = str(tmp_path / "work"), str(tmp_path / "logs")
  job = cluster.submit("tiny-extract", workdir, log_dir, STAGES="extract")
  log = _wait(cluster, job, log_dir, "tiny-extract", timeout=600)
  assert f"job {job} pipeline exited with 0" in log, log[-4000:]
  for rank in (0, 1):  # both processes extracted their own chunk groups
    assert re.search(rf"extracted \d+ tokens x 2 layers in .* on process {rank} of 2", log), log[-4000:]
  a = store_lib.ActivationStore.open(paths.for_config(config, workdir).hidden_states)
  b = store_lib.ActivationStore.open(paths.for_config(config, reference).hidden_states)
  assert a.n_rows == b.n_rows and a.meta["chunk_rows"] == b.meta["chunk_rows"]
  np.testing.assert_array_equal(
    a.read(slice(0, 2), 0, a.n_rows).view(np.uint16), b.read(slice(0, 2), 0, b.n_rows).view(np.uint16)
  )
  np.testing.assert_array_equal(a.token_windows(0, a.n_windows), b.token_windows(0, b.n_windows))
  np.testing.assert_array_equal(a.document_ids(0, a.n_windows), b.document_ids(0, b.n_windows))
  np.testing.assert_array_equal(a.checksums, b.checksums)
  for key in ("layer_stats", "token_checksums", "checksums_sha256", "source_fingerprint"):
    assert a.meta[key] == b.meta[key], key
  assert store_lib.verify_store(a.path) == []


def test_preemption_mid_training_resumes(cluster, tiny_run, tmp_path):
  """scontrol requeue during SAE training: SIGTERM, checkpoint, requeue, resume, same SAEs."""
  config, reference = tiny_run
  from ghosttrack_jax.runtime import paths  # pylint: disable=import-outside-toplevel

  # Longer training than the tiny default (28 steps), so that there is a middle to preempt.
  flags = ["--config.sae_training.epochs=40", "--config.sae_training.checkpoint_every=20"]
  src = paths.for_config(config, reference)
  work = {}
  for name in ("slurm", "single"):  # both start from the reference run's (identical) activation store
    work[name] = str(tmp_path / name)
    dst = paths.for_config(config, work[name])
    shutil.copytree(src.hidden_states, dst.hidden_states)
  log_dir = str(tmp_path / "logs")
  job = cluster.submit(
    "tiny-preempt", work["slurm"], log_dir, STAGES="extract,train", EXTRA_FLAGS=" ".join(flags), STOP_GRACE=60
  )
  ckpt_dir = os.path.join(paths.for_config(config, work["slurm"]).checkpoints, "train_state")

  def mid_training(log, state):
    steps = [int(s) for s in os.listdir(ckpt_dir) if s.isdigit()] if os.path.isdir(ckpt_dir) else []
    assert state not in FINAL_STATES, f"the job ended before it could be preempted:\n{log[-3000:]}"
    return bool(steps) and max(steps) >= 60

  _wait(cluster, job, log_dir, "tiny-preempt", timeout=600, until=mid_training)
  cluster.run("scontrol", "requeue", job)
  # A requeued batch job waits ~2 minutes (BeginTime) before it may start again; do not wait here.
  _wait(
    cluster,
    job,
    log_dir,
    "tiny-preempt",
    timeout=120,
    until=lambda log, state: state == "PENDING" and cluster.job_field(job, "Reason") == "BeginTime",
  )
  cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
  log = _wait(
    cluster,
    job,
    log_dir,
    "tiny-preempt",
    timeout=600,
    until=lambda log, state: "pipeline exited with" in log.split("start #1")[-1] and "start #1" in log,
  )
  _wait(cluster, job, log_dir, "tiny-preempt", timeout=60)
  log = _log(log_dir, "tiny-preempt", job)
  first, second = log.split(f"job {job} start #1")
  assert "preempted: checkpoint at step" in first, first[-4000:]  # SIGTERM -> checkpoint -> exit 75
  m = re.search(r"resuming SAE training from step (\d+) of (\d+)", second)
  assert m and 0 < int(m.group(1)) < int(m.group(2)), second[-4000:]
  assert f"job {job} pipeline exited with 0" in second, second[-4000:]
  tiny_pipeline.run_pipeline(work["single"], stages="extract,train", flags=tuple(flags))
  _assert_saes_equal(config, work["slurm"], work["single"])
