"""The fault matrix (issue 16): each cell a user met on the tiny configs, reproduced through the command
line on real files (a copy of the session's tiny run, real processes, a real full tmpfs, a real read-only
bind mount), and what the run must do instead. The kill/resume cells of every stage are in
tests/test_pipeline.py; cells that need no run are unit tests beside their module:

  cell                                               test
  two runs in one workdir                            test_a_second_run_in_the_workdir_is_refused_naming_the_first
  stale lock after a SIGKILL, temporary files left   test_a_killed_run_leaves_no_lock_and_its_temporary_files_go
  a SLURM requeue of the same job                    test_a_requeued_slurm_job_waits_for_its_previous_run
  extract's groups/.tmp-* (Errno 39)                 test_extract_finishes_over_a_killed_group_record
  disk full during extract and train                 test_disk_full_during_extract_and_train_is_one_line
  disk full during detect/evaluate/report            tests/test_pipeline.py::test_disk_full_during_a_stage_...
  score CLI with a one-class detector                test_scoring_refuses_a_constant_detector_and_an_empty_question
  a damaged token-ids chunk                          test_a_damaged_token_chunk_stops_the_train_stage
  question files: too few groups, a long prompt      test_question_file_problems_stop_before_extraction
  damaged meta.json (read_json of own files)         test_an_unreadable_store_record_is_named_by_verify_and_run
                                                     (+ tests/runtime/test_atomic_io.py)
  config errors                                      test_config_errors_are_one_line
  unwritable parent, read-only finished run          test_workdir_that_cannot_be_written
  files honour the umask                             test_outputs_honour_the_umask (+ test_atomic_io.py)
  control tokens in user text                        tests/answer/test_prompts.py
  empty question / long question                     test_scoring_refuses_..., test_a_long_question_is_not_echoed
  SIGTERM outside the train loop                     test_sigterm_outside_training_exits_75_and_the_rerun_completes
  --verify on a store of another config              test_verify_calls_another_configs_store_a_mismatch_quietly
  jsonl errors name a line                           tests/answer/test_datasets.py
  duplicate rows in train_log/metrics.jsonl          test_a_resumed_training_logs_each_step_once
  a full rerun over a damaged feature table          test_a_full_rerun_over_a_damaged_feature_table_stops_naming_it
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import disk_full
import numpy as np
import output_compare
import pytest
import synthetic_tables
import tiny_pipeline

from ghosttrack_jax import config_lib
from ghosttrack_jax.detect import score
from ghosttrack_jax.detect import stage as detect_stage
from ghosttrack_jax.errors import DataError, WorkdirBusyError
from ghosttrack_jax.extract import stage as extract_stage
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import atomic_io, paths, workdir_lock, writer
from ghosttrack_jax.track import feature_table

REPO = tiny_pipeline.REPO


def _popen(workdir, *flags, env=None, log=None):
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={tiny_pipeline.CONFIG}",
    f"--workdir={workdir}",
  ]
  return subprocess.Popen(
    cmd + list(flags),
    cwd=REPO,
    env={**os.environ, **tiny_pipeline.ENV, **(env or {})},
    stdout=log or subprocess.DEVNULL,
    stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    text=True,
  )


def _wait_for(predicate, timeout=120.0, what=""):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.05)


def _lock_record(workdir) -> dict:
  try:
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME), encoding="utf-8") as f:
      text = f.read()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}


def _rel(config) -> paths.ModelPaths:
  """The output folders of `config`'s model relative to a workdir."""
  return paths.ModelPaths("", config.model.name)


def _copy(src, dst, *skip):
  """A copy of the workdir `src` without the folders `skip` (relative paths)."""
  shutil.copytree(
    src,
    dst,
    symlinks=True,
    ignore=lambda d, names: [n for n in names if os.path.relpath(os.path.join(d, n), src) in skip],
  )
  return dst


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("E") and "] " in line]


# ---- the workdir lock ----------------------------------------------------------------------------------


def test_a_second_run_in_the_workdir_is_refused_naming_the_first(tmp_path):
  workdir = str(tmp_path / "run")
  first = _popen(workdir, "--stages=extract,train")
  try:
    _wait_for(lambda: _lock_record(workdir).get("pid") == first.pid, what="the first run's lock")
    second = tiny_pipeline.main_process(workdir)
  finally:
    first_rc = first.wait(timeout=600)
  assert second.returncode == 2, second.stderr[-3000:]
  assert (
    "WorkdirBusyError" in second.stderr and f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
  )
  assert "Traceback" not in second.stderr and "=== stage" not in second.stderr
  assert first_rc == 0  # the first run was not disturbed


def test_a_killed_run_leaves_no_lock_and_its_temporary_files_go(tmp_path):
  workdir = str(tmp_path / "run")
  with open(tmp_path / "first.log", "w", encoding="utf-8") as log:
    first = _popen(workdir, "--stages=extract", log=log)
    _wait_for(lambda: _lock_record(workdir).get("pid") == first.pid, what="the first run's lock")
    first.send_signal(signal.SIGKILL)
    first.wait()
  # What a kill inside atomic_io.atomic_path leaves (here placed, so the test does not depend on timing).
  leftovers = [os.path.join(workdir, "cache", ".tmp-meta.json-x1"), os.path.join(workdir, ".tmp-y")]
  for path in leftovers:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
  proc = tiny_pipeline.main_process(workdir, "--stages=extract")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"pid {first.pid}" in proc.stderr and "stopped before it finished" in proc.stderr
  assert not [p for p in leftovers if os.path.exists(p)]
  assert _lock_record(workdir) == {}  # released at the end


def test_a_requeued_slurm_job_waits_for_its_previous_run(tmp_path, monkeypatch):
  """The holder is job 4242's previous run (SLURM keeps the job id on a requeue): a run of job 4242
  waits for it to end and gets in; a run of any other job is refused at once, naming job 4242."""
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\n"
      "from ghosttrack_jax.runtime import workdir_lock\n"
      "with workdir_lock.hold(sys.argv[1]):\n"
      "  print('held', flush=True)\n"
      "  time.sleep(3)\n",
      workdir,
    ],
    env={**os.environ, "SLURM_JOB_ID": "4242"},
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  with pytest.raises(WorkdirBusyError, match="SLURM job 4242"):
    with workdir_lock.hold(workdir):
      pass
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  t0 = time.monotonic()
  with workdir_lock.hold(workdir, wait_same_job_s=60):
    waited = time.monotonic() - t0
  assert holder.wait() == 0
  assert waited > 2  # got in once the previous run let go (it held the lock for 3 s)


# ---- temporary files -----------------------------------------------------------------------------------


def test_extract_finishes_over_a_killed_group_record(tmp_path):
  """A kill while a chunk group's record was being written leaves groups/.tmp-*; the resumed extraction
  must finish (it crashed with Errno 39, "Directory not empty")."""
  config = tiny_pipeline.tiny_config()
  workdir = str(tmp_path)
  path = paths.for_config(config, workdir).hidden_states
  extract_stage.run(config, workdir)
  meta = atomic_io.read_json(os.path.join(path, store_lib.META))
  os.remove(os.path.join(path, store_lib.COMPLETE))  # back to half-written: phase 2, no group recorded
  geometry = {k: meta[k] for k in ("n_windows",)}
  atomic_io.atomic_write_json(
    os.path.join(path, store_lib.PROGRESS),
    {"phase": "activations", **geometry, "batch_size": 8, "chunk_rows": config.extract.chunk_rows},
  )
  os.makedirs(os.path.join(path, store_lib.GROUPS))
  open(os.path.join(path, store_lib.GROUPS, ".tmp-00000001.json-k1ll3d"), "w").close()
  extract_stage.run(config, workdir)
  assert os.path.exists(os.path.join(path, store_lib.COMPLETE))
  assert not os.path.exists(os.path.join(path, store_lib.GROUPS))
  assert store_lib.verify_store(path) == []


# ---- disk full -----------------------------------------------------------------------------------------


def test_disk_full_during_extract_and_train_is_one_line(tiny_run, tmp_path):
  """TensorStore (extract) and Orbax (train) raise their own errors for ENOSPC, from several threads: the
  run ends with the one documented line and status 2, and after freeing space the same command finishes
  with the outputs of an uninterrupted run."""
  config, reference = tiny_run
  with disk_full.small_filesystem(tmp_path, mib=32) as mnt:
    if mnt is None:
      pytest.skip("mounting a tmpfs is not permitted here")
    workdir = os.path.join(mnt, "run")
    for stages, leave in (("extract", 1 << 20), ("train", 300 << 10)):
      disk_full.fill(mnt, leave=leave)
      proc = tiny_pipeline.main_process(workdir, f"--stages={stages}")
      assert proc.returncode == 2, proc.stderr[-3000:]
      errors = _error_lines(proc.stderr)
      assert len(errors) == 1 and "disk full" in errors[0] and "rerun the same command" in errors[0], errors
      assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
      disk_full.free(mnt)
      proc = tiny_pipeline.main_process(workdir, f"--stages={stages}")
      assert proc.returncode == 0, proc.stderr[-3000:]
    mp, ref = paths.for_config(config, workdir), paths.for_config(config, reference)
    assert store_lib.verify_store(mp.hidden_states) == []
    for name in ("checksums.npy", "token_ids/c/0/0"):
      with (
        open(os.path.join(mp.hidden_states, name), "rb") as a,
        open(os.path.join(ref.hidden_states, name), "rb") as b,
      ):
        assert a.read() == b.read(), name
    for d, _, names in os.walk(ref.sae_export):
      for n in names:
        rel = os.path.relpath(os.path.join(d, n), ref.sae_export)
        with open(os.path.join(d, n), "rb") as a, open(os.path.join(mp.sae_export, rel), "rb") as b:
          assert a.read() == b.read(), rel


# ---- damaged or degenerate inputs ----------------------------------------------------------------------


def test_scoring_refuses_a_constant_detector_and_an_empty_question(tmp_path):
  """Every training answer hallucinated: detect saves constant detectors, which would score every
  question 1.0 "hallucinated". Scoring refuses, before loading the model; so it does an empty question."""
  config = synthetic_tables.tiny_config()
  synthetic_tables.write_synthetic(config, str(tmp_path), n=45, positive_rate=1.0)
  detect_stage.run(config, str(tmp_path))
  with pytest.raises(DataError, match="all 45 of its training answers are in one class"):
    score.score_question(config, str(tmp_path), "What is the capital of France?")
  with pytest.raises(DataError, match="the question is empty"):
    score.score_question(config, str(tmp_path), "  ")


def test_a_damaged_token_chunk_stops_the_train_stage(tiny_run, tmp_path):
  """The SAE quality table reads held-out token windows for CE-loss recovered, KL and delta LM loss: a
  damaged token chunk stops the stage naming it, instead of a warning and a table without those columns."""
  config, src = tiny_run
  rel = _rel(config)
  workdir = _copy(src, str(tmp_path / "run"), rel.sae_results, rel.sae_export)
  mp = paths.for_config(config, workdir)
  chunk = os.path.join(mp.hidden_states, "token_ids", "c", "0", "0")
  with open(chunk, "r+b") as f:
    f.seek(os.path.getsize(chunk) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  proc = tiny_pipeline.main_process(workdir, "--stages=train")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "DamagedStoreError" in proc.stderr and chunk in proc.stderr, proc.stderr[-3000:]
  assert not atomic_io.is_done(mp.sae_results)


def test_question_file_problems_stop_before_extraction(tmp_path):
  """Too few distinct questions for the folds, and a prompt longer than the model's positions (named by
  file, line and id): found before any stage, not after extraction and training."""
  rows = [{"question": f"What is the answer to question {i}?", "answers": ["x"]} for i in range(8)]
  # (a long answer: never one of the qa.n_exemplars = 3 items set aside as the prompt's solved exemplars)
  rows[3] = {"question": " ".join(["long"] * 1500), "answers": ["a long gold answer"], "id": "q-long"}
  short = [r for i, r in enumerate(rows) if i != 3]
  cases = {"two.jsonl": (short[:5], "2 distinct question(s) cannot fill config.evaluate.n_folds=3")}
  cases["few.jsonl"] = (short[:2], "few.jsonl: 2 items have a short (<= 3 words) first answer")
  cases["long.jsonl"] = (rows, "long.jsonl line 4 (id jsonl-q-long)")
  for name, (lines, message) in cases.items():
    qa, workdir = str(tmp_path / name), str(tmp_path / f"run_{name}")
    with open(qa, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in lines)
    proc = tiny_pipeline.main_process(
      workdir, "--config.qa.dataset=jsonl", f"--config.qa.path={qa}", "--config.qa.prompt_style=fewshot"
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]
    assert "=== stage" not in proc.stderr and not os.path.exists(os.path.join(workdir, "cache"))


def test_an_unreadable_store_record_is_named_by_verify_and_run(tiny_run, tmp_path):
  config, src = tiny_run
  workdir = _copy(src, str(tmp_path / "run"))
  meta = os.path.join(paths.for_config(config, workdir).hidden_states, store_lib.META)
  with open(meta, "r+b") as f:
    f.write(b"\xff\xfe")
  for flags in (("--verify",), ("--stages=train",)):
    proc = tiny_pipeline.main_process(workdir, *flags)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"{meta} is damaged" in out and "rerun the 'extract' stage" in out, out[-3000:]
    assert "Traceback" not in out


def test_a_full_rerun_over_a_damaged_feature_table_stops_naming_it(tiny_run, tmp_path):
  """A finished stage that is skipped on a rerun still checks its files: the damaged table stops the run
  (it used to exit 0 and rebuild the report from the intact later outputs without a word)."""
  config, src = tiny_run
  workdir = _copy(src, str(tmp_path / "run"))
  table = os.path.join(
    paths.for_config(config, workdir).tracking, config_lib.question_set(config), feature_table.FEATURES
  )
  with open(table, "r+b") as f:
    f.seek(os.path.getsize(table) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  proc = tiny_pipeline.main_process(workdir)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 2, out[-3000:]
  assert f"{table} is damaged" in out and "rerun the 'track' stage" in out, out[-3000:]
  assert "Traceback" not in out
  assert "=== stage detect ===" not in out  # stopped at the stage that owns the table


# ---- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ("--config.sae.widht=8",),
      "--config.sae.widht: the config has no field 'sae.widht'; did you mean --config.sae.width",
    ),
    (("--config=configs/gpt2_small.py:a10",), "unknown preset 'a10' for configs/gpt2_small.py"),
    (("--config=configs/tiny.py:nope",), "configs/tiny.py has the presets '' and 'default', not 'nope'"),
    (("--config=configs/missing.py",), "--config=configs/missing.py: no such config file"),
  ],
)
def test_config_errors_are_one_line(tmp_path, flags, message):
  config = [] if any(f.startswith("--config=") for f in flags) else [f"--config={tiny_pipeline.CONFIG}"]
  cmd = [sys.executable, "-m", "ghosttrack_jax.main", *config, f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd + list(flags), cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip() and "deprecated" not in line]
  assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-3000:]


def _read_only_bind(src: str, dst: str) -> bool:
  """Mounts `src` read-only at `dst` (root only); False where that is not permitted."""
  os.makedirs(dst, exist_ok=True)
  for cmd in (["mount", "--bind", src, dst], ["mount", "-o", "remount,ro,bind", dst]):
    if subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode:
      subprocess.run(["umount", dst], capture_output=True, timeout=30, check=False)
      return False
  return True


def test_workdir_that_cannot_be_written(tiny_run, tmp_path):
  """A workdir under a read-only folder is refused by the config check, before the model loads; a
  finished run on read-only storage reruns (every stage skipped, the report unchanged) and verifies."""
  config, src = tiny_run
  copy = _copy(src, str(tmp_path / "copy"))
  ro = str(tmp_path / "ro")
  if not _read_only_bind(copy, ro):
    pytest.skip("a read-only bind mount is not permitted here")
  try:
    proc = tiny_pipeline.main_process(os.path.join(ro, "new", "run"))
    assert proc.returncode == 2 and f"{ro} is not a writable folder" in proc.stderr, proc.stderr[-3000:]
    assert "=== stage" not in proc.stderr and "Traceback" not in proc.stderr
    for flags in ((), ("--verify",)):
      proc = tiny_pipeline.main_process(ro, *flags)
      assert proc.returncode == 0, proc.stderr[-3000:]
    assert not output_compare.differences(src, ro, config.model.name)
  finally:
    subprocess.run(["umount", ro], capture_output=True, timeout=30, check=False)


def test_outputs_honour_the_umask(tiny_run, tmp_path):
  """Files the stages write get the mode a new file gets under the umask (here 002: group-writable, as a
  shared results folder wants), not the private 0600 of a temporary file."""
  config, src = tiny_run
  workdir = _copy(src, str(tmp_path / "run"), _rel(config).evaluation)
  proc = subprocess.run(  # through sh, which sets the umask (a preexec_fn would fork this JAX process)
    [
      "sh",
      "-c",
      'umask 002 && exec "$@"',
      "sh",
      sys.executable,
      "-m",
      "ghosttrack_jax.main",
      f"--config={tiny_pipeline.CONFIG}",
      f"--workdir={workdir}",
      "--stages=evaluate,report",
    ],
    cwd=REPO,
    env={**os.environ, **tiny_pipeline.ENV},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluation = paths.for_config(config, workdir).evaluation
  modes = {
    os.path.relpath(os.path.join(d, n), evaluation): os.stat(os.path.join(d, n)).st_mode & 0o777
    for d, _, names in os.walk(evaluation)
    for n in names
  }
  assert modes and all(m == 0o664 for m in modes.values()), modes


def test_a_long_question_is_not_echoed(tiny_run):
  """A 5,000-word question that is no wikidata stem, scored with the stem prompt (the offline default's):
  the error names it by its start and length instead of repeating it in one 31 KB log line."""
  config, workdir = tiny_run
  question = " ".join(["word"] * 5000)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "ghosttrack_jax.tools.score_cli",
      f"--config={tiny_pipeline.CONFIG}",
      f"--workdir={workdir}",
      f"--question={question}",
      "--config.qa.dataset=wikidata",
      "--config.qa.prompt_style=stem",
      f"--dataset={config.qa.dataset}",  # the detector of the tiny run
    ],
    cwd=REPO,
    env={**os.environ, **tiny_pipeline.ENV},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 2 and "(24999 characters) is neither" in proc.stderr, proc.stderr[-3000:]
  assert max(len(line) for line in proc.stderr.splitlines()) < 1000


def test_sigterm_outside_training_exits_75_and_the_rerun_completes(tiny_run, tmp_path):
  config, src = tiny_run
  ds = config.qa.dataset
  workdir = _copy(src, str(tmp_path / "run"), os.path.join(_rel(config).evaluation, ds))
  log_path = str(tmp_path / "log")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = _popen(workdir, log=log)

    def in_evaluate():
      with open(log_path, encoding="utf-8", errors="replace") as f:
        return "=== stage evaluate ===" in f.read()

    _wait_for(in_evaluate, what="the evaluate stage")
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=300)
  with open(log_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  assert rc == 75 and "rerun the same command to resume" in text, text[-3000:]
  assert "Traceback" not in text
  rerun = tiny_pipeline.main_process(workdir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert not output_compare.differences(src, workdir, config.model.name)


def test_verify_calls_another_configs_store_a_mismatch_quietly(tiny_run):
  config, workdir = tiny_run
  proc = tiny_pipeline.main_process(workdir, "--verify", "--config.data.seq_len=16")
  assert proc.returncode == 2, proc.stderr[-3000:]
  store = [line for line in proc.stdout.splitlines() if " store " in line]
  assert store and store[0].startswith("mismatch"), proc.stdout
  assert "made for another config" in proc.stdout
  assert "CheckpointHandlerRegistry" not in proc.stderr and "checkpoint_handler.py" not in proc.stderr


def test_a_resumed_training_logs_each_step_once(tiny_run, tmp_path):
  """A kill after the step-20 checkpoint, once steps 25 and 28 and the held-out rows were logged but
  before the stage's DONE: the resumed run logs 21..28 again. Each step must appear once."""
  config, src = tiny_run
  mp_src = paths.for_config(config, src)
  workdir = _copy(src, str(tmp_path / "run"), _rel(config).sae_export)
  mp = paths.for_config(config, workdir)
  ckpt = os.path.join(mp.checkpoints, "train_state")
  steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
  shutil.rmtree(os.path.join(ckpt, str(steps[-1])))
  for name in os.listdir(mp.sae_results):
    if name != "train_log":
      os.remove(os.path.join(mp.sae_results, name))
  log = os.path.join(mp.sae_results, "train_log", "metrics.jsonl")
  with open(log, "a", encoding="utf-8") as f:
    f.write('{"step": 28, "time": 1.0, "layer_00/l')  # the line a kill cut short
  proc = tiny_pipeline.main_process(workdir, "--stages=train")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = writer.read_jsonl(log)
  train = [r["step"] for r in rows if not any(k.startswith("eval/") for k in r)]
  assert len(train) == len(set(train)) and train == sorted(train), train
  assert sum(any(k.startswith("eval/") for k in r) for r in rows) == 1
  ref = writer.read_jsonl(os.path.join(mp_src.sae_results, "train_log", "metrics.jsonl"))
  assert np.isin([r["step"] for r in ref], train + [steps[-1]]).all()
