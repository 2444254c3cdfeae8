"""Preemption safety of the train stage: SIGKILL mid-run then resume gives bit-identical final
parameters; SIGTERM saves a checkpoint and exits with status 75; NaN/Inf stops with a clear error and
keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

from ghosttrack_jax.errors import NonFiniteLossError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import checkpointing, paths
from ghosttrack_jax.sae import export
from ghosttrack_jax.train import data as train_data
from ghosttrack_jax.train import loop as train_loop
from tests import sae_synthetic as syn

REPO = syn.REPO
# Long enough to be killed mid-run (about 500 steps of a tiny SAE), short enough for CI.
LONG = {"sae_training.epochs": 35, "sae_training.checkpoint_every": 25, "sae_training.log_every": 50}
RUNNER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {repo!r})
from tests import sae_synthetic as syn
from ghosttrack_jax.train import stage as train_stage
train_stage.run(syn.tiny_config(**json.loads(sys.argv[2])), sys.argv[1])
"""


def _workdir(tmp_path, name):
  workdir = str(tmp_path / name)
  syn.make_store(paths.ModelPaths(workdir, "synthetic").hidden_states, n_layers=3, n_windows=64, seed=2)
  return workdir


def _start(workdir, overrides):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen(
    [sys.executable, "-c", RUNNER.format(repo=REPO), workdir, json.dumps(overrides)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _steps(workdir) -> list[int]:
  d = os.path.join(paths.ModelPaths(workdir, "synthetic").checkpoints, "train_state")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _wait_for_step(proc, workdir, at_least, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    steps = _steps(workdir)
    if steps and steps[-1] >= at_least:
      return steps[-1]
    if proc.poll() is not None:
      pytest.fail(
        f"training ended (status {proc.returncode}) before step {at_least}:\n{proc.stdout.read()[-3000:]}"
      )
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f"no checkpoint at step >= {at_least} after {timeout} s")


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _exported(workdir):
  root = paths.ModelPaths(workdir, "synthetic").sae_export
  return [export.read_saelens(export.layer_dir(root, l))[0] for l in range(3)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run of the same configuration."""
  ref_dir = _workdir(tmp_path_factory.mktemp("reference"), "reference")
  code, out = _finish(_start(ref_dir, LONG))
  assert code == 0, out[-3000:]
  return ref_dir


def _assert_same_saes(ref_dir, run_dir):
  for ref, got in zip(_exported(ref_dir), _exported(run_dir)):
    for name in ref:
      np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, reference):
  ref_dir, run_dir = reference, _workdir(tmp_path, "killed")
  proc = _start(run_dir, LONG)
  killed_at = _wait_for_step(proc, run_dir, at_least=100)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  total = int(
    json.load(open(os.path.join(paths.ModelPaths(ref_dir, "synthetic").sae_export, "layer_00", "cfg.json")))[
      "metadata"
    ]["ghosttrack"]["training"]["steps"]
  )
  assert killed_at < total, "the run finished before it could be killed; make LONG longer"
  code, out = _finish(_start(run_dir, LONG))
  assert code == 0, out[-3000:]
  assert "resuming SAE training from step" in out
  _assert_same_saes(ref_dir, run_dir)


def test_sigterm_saves_a_checkpoint_and_exits_75_then_resumes(tmp_path, reference):
  run_dir = _workdir(tmp_path, "preempted")
  proc = _start(run_dir, LONG)
  _wait_for_step(proc, run_dir, at_least=50)
  proc.send_signal(signal.SIGTERM)
  code, out = _finish(proc)
  assert code == checkpointing.EXIT_PREEMPTED, out[-3000:]
  assert "preempted: checkpoint at step" in out
  stopped = int(out.split("preempted: checkpoint at step ")[1].split()[0])
  assert _steps(run_dir)[-1] == stopped
  assert not os.path.exists(os.path.join(paths.ModelPaths(run_dir, "synthetic").sae_results, "DONE"))
  code, out = _finish(_start(run_dir, LONG))
  assert code == 0, out[-3000:]
  assert f"resuming SAE training from step {stopped}" in out
  _assert_same_saes(reference, run_dir)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
  store_dir = str(tmp_path / "store")
  syn.make_store(store_dir, n_layers=2, n_windows=32, seed=3)
  store = store_lib.ActivationStore.open(store_dir)
  config = syn.tiny_config(**{"sae_training.epochs": 1, "sae_training.checkpoint_every": 2})
  n_train = store.n_rows - 64
  plan = train_loop.data_plan(config, n_train, 128)
  bad = plan.schedule()[-1]  # one epoch: its last buffer holds the bad window, earlier steps are clean
  start, stop = bad.windows[0]
  arr = store_lib.open_array(os.path.join(store_dir, "activations"), read_only=False)
  arr[1, start:stop].write(np.full((stop - start, store.d_model), np.inf, ml_dtypes.bfloat16)).result()
  store.verify_reads = False  # the Inf rows are written on purpose: the NaN check, not the CRC, must see them
  ckpt_dir = str(tmp_path / "ckpt")
  with pytest.raises(NonFiniteLossError, match=rf"NaN/Inf at step {bad.first_step} for layer\(s\) \[1\]"):
    train_loop.train(
      config,
      store,
      layers=[0, 1],
      layer_positions=[0, 1],
      n_train_rows=n_train,
      window_rows=128,
      mean_sq_norms=store.mean_sq_norm(),
      ckpt_dir=ckpt_dir,
      log_dir=str(tmp_path / "log"),
    )
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  last = ckpt.latest_step()
  assert last is not None and last <= bad.first_step
  restored = ckpt._manager.restore(last)  # raw composite: every saved array is finite
  for key, value in restored.state.items():
    assert np.all(np.isfinite(np.asarray(value, np.float64))), key
  ckpt.close()


def test_data_position_is_recorded(tmp_path):
  store_dir = str(tmp_path / "store")
  syn.make_store(store_dir, n_layers=1, n_windows=24, seed=4)
  store = store_lib.ActivationStore.open(store_dir)
  config = syn.tiny_config(**{"sae_training.epochs": 3, "sae_training.checkpoint_every": 4})
  ckpt_dir = str(tmp_path / "ckpt")
  result = train_loop.train(
    config,
    store,
    layers=[0],
    layer_positions=[0],
    n_train_rows=store.n_rows - 64,
    window_rows=128,
    mean_sq_norms=store.mean_sq_norm(),
    ckpt_dir=ckpt_dir,
    log_dir=str(tmp_path / "log"),
  )
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  record = ckpt._manager.restore(ckpt.latest_step()).record
  ckpt.close()
  plan = train_loop.data_plan(config, store.n_rows - 64, 128)
  assert record["step"] == result.steps == plan.total_steps
  assert record["data_position"] == plan.position(result.steps)
  assert record["rng"]["seed"] == config.seed
  assert isinstance(plan, train_data.DataPlan)
