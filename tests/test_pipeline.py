"""Fault injection across every stage (docs/DESIGN.md "Stages and files"): the tiny pipeline is killed with
SIGKILL at a random point of each stage in turn (extract, train, answer, track, detect, evaluate, report),
and the rerun ends with outputs identical to an uninterrupted run (arrays exactly, JSON by value; wall
times and the code commit ignored, tests/output_compare.py). And a full disk during a stage's writes
(a real one: a small tmpfs) leaves the previous complete output untouched.

The kill points are drawn from a seed printed with every failure; GHOSTTRACK_FAULT_SEED=<n> replays one.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import disk_full
import output_compare
import pytest
import tiny_pipeline

from ghosttrack_jax import config_lib
from ghosttrack_jax.runtime import atomic_io, paths

STAGES = config_lib.STAGES
_FINISHED = re.compile(r"=== stage (\w+) finished in ([0-9.]+) s ===")


_STAMPED = re.compile(
  r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*=== stage (\w+)( finished in [\d.]+ s)? ===", re.M
)


def stage_seconds(log: str) -> dict[str, float]:
  """Wall seconds per stage: between the log's time stamps of `=== stage X ===` and `=== stage X finished
  in S s ===` (microseconds: the tiny run's evaluate stage takes ~0.06 s, which S rounds to 0.1), else S."""
  out = {m.group(1): float(m.group(2)) for m in _FINISHED.finditer(log)}
  start = {}
  for m in _STAMPED.finditer(log):
    t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if m.group(5) is None:
      start[m.group(4)] = t
    elif m.group(4) in start:
      out[m.group(4)] = (t - start[m.group(4)]) % 86400
  return out


def kill_during(workdir: str, stage: str, delay: float, log_path: str) -> tuple[bool, str]:
  """Starts the whole pipeline on `workdir` and SIGKILLs it (its process group) `delay` seconds after
  `stage` starts. Returns (killed inside `stage`, the log)."""
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={tiny_pipeline.CONFIG}",
    f"--workdir={workdir}",
  ]
  env = {**os.environ, **tiny_pipeline.ENV}
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(
      cmd, cwd=tiny_pipeline.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
  started, deadline = None, time.monotonic() + 900
  while proc.poll() is None and time.monotonic() < deadline:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      text = f.read()
    if started is None and f"=== stage {stage} ===" in text:
      started = time.monotonic()
    if started is not None and (time.monotonic() - started >= delay or f"stage {stage} finished" in text):
      break
    time.sleep(0.002)  # some stages of the tiny run take tens of milliseconds
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  with open(log_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  return started is not None and f"stage {stage} finished" not in text, text


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory):
  """(workdir, stage seconds) of an uninterrupted run of this code: the session's tiny run, unless that
  was reused from GHOSTTRACK_TINY_WORKDIR (possibly older code), then a fresh one."""
  _, workdir = tiny_run
  seconds = stage_seconds(tiny_pipeline.log())
  if os.environ.get("GHOSTTRACK_TINY_WORKDIR") or set(seconds) != set(STAGES):
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    _, log = tiny_pipeline.run_pipeline(workdir)
    seconds = stage_seconds(log)
  return workdir, seconds


def _copy(src: str, dst: str) -> None:
  shutil.rmtree(dst, ignore_errors=True)
  if os.path.exists(src):
    shutil.copytree(src, dst, symlinks=True)


def test_sigkill_in_every_stage_then_rerun_equals_an_uninterrupted_run(reference, tmp_path):
  ref_dir, seconds = reference
  seed = int(os.environ.get("GHOSTTRACK_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
  rng = random.Random(seed)
  workdir, snapshot = str(tmp_path / "killed"), str(tmp_path / "snapshot")
  history = []
  for stage in STAGES:
    # A point drawn uniformly over the stage's uninterrupted wall time. When the stage is over before it
    # (timings vary with the machine's load), the workdir goes back to its state before the try and the
    # next point is drawn over 90% of the time the stage took this time.
    _copy(workdir, snapshot)
    window = seconds[stage]
    for attempt in range(5):
      delay = rng.uniform(0.0, window)
      killed, log = kill_during(workdir, stage, delay, str(tmp_path / f"{stage}_{attempt}.log"))
      history.append(f"{stage} try {attempt}: kill {delay:.2f} s in, {'inside' if killed else 'missed'}")
      if killed:
        break
      assert "Traceback" not in log, f"seed {seed}: the run failed before the kill:\n{log[-3000:]}"
      window = stage_seconds(log).get(stage, window) * 0.9
      _copy(snapshot, workdir)
    else:
      pytest.fail(f"seed {seed}: never killed inside {stage}: {history}")
  tiny_pipeline.run_pipeline(workdir)  # the rerun after the last kill, to the end
  diffs = output_compare.differences(ref_dir, workdir, tiny_pipeline.load_config().model.name)
  assert not diffs, f"seed {seed}; kills: {history}; differences: {diffs}"
  print(f"fault injection seed {seed}:", *history, sep="\n  ")  # shown with pytest -s


def _snapshot(root: str) -> dict[str, bytes]:
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      with open(os.path.join(d, n), "rb") as f:
        out[os.path.relpath(os.path.join(d, n), root)] = f.read()
  return out


def _main(workdir: str, stages: str):
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={tiny_pipeline.CONFIG}",
    f"--workdir={workdir}",
  ]
  return subprocess.run(
    cmd + [f"--stages={stages}"],
    cwd=tiny_pipeline.REPO,
    env={**os.environ, **tiny_pipeline.ENV},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def test_disk_full_during_a_stage_keeps_the_previous_complete_output(tiny_run, tmp_path):
  """On a real full filesystem (a small tmpfs): the report stage, which rebuilds its files on every run,
  fails with a clear error when one must change and leaves the previous report untouched; an evaluate
  stage that cannot write leaves no DONE (nothing half-written is taken as complete); with space again
  both finish as before."""
  config, src = tiny_run
  with disk_full.small_filesystem(tmp_path, mib=32) as mnt:
    if mnt is None:
      pytest.skip("mounting a tmpfs is not permitted here (tests/runtime/test_atomic_io.py has a stand-in)")
    workdir = os.path.join(mnt, "run")
    shutil.copytree(src, workdir, symlinks=True)
    evaluation = paths.for_config(config, workdir).evaluation
    with open(os.path.join(evaluation, "report.html"), "a", encoding="utf-8") as f:
      f.write("<!-- an older report -->\n")  # an unchanged file is not rewritten: make the report differ
    before = _snapshot(evaluation)
    disk_full.fill(mnt, leave=16 << 10)
    proc = _main(workdir, "report")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "disk full" in proc.stderr and "free space" in proc.stderr, proc.stderr[-3000:]
    assert _snapshot(evaluation) == before  # every file as it was, and no temporary file left

    metrics_dir = os.path.join(evaluation, config.qa.dataset)
    shutil.rmtree(metrics_dir)  # the evaluate stage must write it again
    disk_full.fill(mnt, leave=4 << 10)  # less than metrics.json needs, again
    proc = _main(workdir, "evaluate")
    assert proc.returncode == 2 and "disk full" in proc.stderr, proc.stderr[-3000:]
    left = os.listdir(metrics_dir) if os.path.isdir(metrics_dir) else []
    assert atomic_io.DONE not in left and not [n for n in left if n.startswith(".tmp-")], left

    disk_full.free(mnt)
    proc = _main(workdir, "evaluate,report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not output_compare.differences(src, workdir, config.model.name)
