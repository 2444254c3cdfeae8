"""Artefacts of full pipeline runs on configs/tiny.py (`get`) and on configs/tiny.py:default (`get_default`,
the offline default's code paths), shared by the tests that need real outputs (notebooks, scoring CLI,
dashboard of a real case, planner against actual usage, fault injection).

The run happens once per test session, in a subprocess started exactly like the README's command, so
its JAX runtime is separate from the test process. Set GHOSTTRACK_TINY_WORKDIR to reuse (or keep) a run:
stages with DONE markers are skipped, so a finished workdir costs nothing the second time
(GHOSTTRACK_TINY_DEFAULT_WORKDIR likewise for the default-settings run).

  @pytest.fixture(scope="session")
  def tiny_run(tmp_path_factory):
    return tiny_pipeline.get(tmp_path_factory)      # (config, workdir)
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.runtime import atomic_io, paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny.py")
# The environment of every tiny run: 2 simulated devices, as each task of the SLURM test has. XLA's CPU
# code (and so the last bits of the results) depends on the device count of the process, and tests
# compare runs bit for bit.
ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
_cache: dict = {}


# configs/tiny.py:default: the tiny sizes with every code-path setting of configs/smollm2_135m.py.
DEFAULT_CONFIG = CONFIG + ":default"


def load_config(arg=None):
  """configs/tiny.py's get_config(arg), as `--config=configs/tiny.py[:arg]` gives it."""
  spec = importlib.util.spec_from_file_location("tiny_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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
  workdir: str,
  stages: str | None = None,
  env: dict | None = None,
  timeout: float = 900,
  flags: tuple = (),
  config: str = CONFIG,
) -> tuple[float, str]:
  """Runs `python -m ghosttrack_jax.main` on a tiny config; returns (seconds, log). Raises on failure."""
  cmd = [sys.executable, "-m", "ghosttrack_jax.main", f"--config={config}", f"--workdir={workdir}"]
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


def main_process(workdir: str, *flags, config: str = CONFIG, timeout: float = 900):
  """`python -m ghosttrack_jax.main` on `workdir` with `flags`, not raising on failure (the caller checks
  the exit status and the log)."""
  cmd = [sys.executable, "-m", "ghosttrack_jax.main", f"--config={config}", f"--workdir={workdir}", *flags]
  return subprocess.run(
    cmd, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout, check=False
  )


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


def _default_qa_file(path: str, n_relations: int = 4, per_relation: int = 11) -> None:
  """A small BIG-bench qa_wikidata file: the first `per_relation` stems of the first `n_relations`
  relations ("The <relation> of <subject> is"), enough for the exemplars and the questions."""
  rows, seen = [], {}
  with open(os.path.join(REPO, "data", "qa", "bigbench_qa_wikidata.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      rel = r["context"].split(" of ")[0]
      if r["context"].startswith("The ") and " of " in r["context"] and r["context"].endswith(" is"):
        if rel in seen or len(seen) < n_relations:
          seen[rel] = seen.get(rel, 0) + 1
          if seen[rel] <= per_relation:
            rows.append(r)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def get_default(tmp_path_factory) -> tuple:
  """(config, workdir, qa_file) of a finished run of configs/tiny.py:default, the offline default's code
  paths on a tiny random Llama. A random model gets every wikidata stem wrong, so the run answers from
  `qa_file`, a few relations of the wikidata file in which every other question's gold is the answer the
  model gives: the first pass generates the answers, the second reuses the saved generations and labels
  them (both classes, as on the real model, through the same own-answer code)."""
  if "default" not in _cache:
    root = os.environ.get("GHOSTTRACK_TINY_DEFAULT_WORKDIR") or str(tmp_path_factory.mktemp("tiny_default"))
    workdir, qa_file = os.path.join(root, "run"), os.path.join(root, "wikidata_tiny.jsonl")
    config = load_config("default")
    # Non-answers stay in: a random model's words often repeat the question's; so do answers the token
    # budget cut (a random model rarely ends an answer by itself).
    flags = (
      f"--config.qa.wikidata_file={qa_file}",
      "--config.qa.exclude_non_answers=False",
      "--config.qa.exclude_cut_answers=False",
    )
    if not os.path.exists(qa_file):
      _default_qa_file(qa_file)
    answers = paths.for_config(config, workdir).answers(config.qa.dataset)
    if not os.path.exists(qa_file + ".relabelled"):
      run_pipeline(workdir, stages="answer", flags=flags, config=DEFAULT_CONFIG)
      with open(qa_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
      for k, e in enumerate(examples_lib.load_examples(config, workdir)):
        if k % 2 == 0 and e["answer_text"].strip(" ."):
          rows[int(e["id"].split("-")[1])]["continuation"] = e["answer_text"].strip(" .")
      with open(qa_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
      atomic_io.clear_done(answers)  # relabel on the next run (the generations are reused)
      with open(qa_file + ".relabelled", "w", encoding="utf-8") as f:
        f.write("the QA file has the model's own answers as gold for every other question\n")
    _, log = run_pipeline(workdir, flags=flags, config=DEFAULT_CONFIG)
    config.qa.wikidata_file, config.qa.exclude_non_answers = qa_file, False
    config.qa.exclude_cut_answers = False
    _cache["default"] = (config, workdir, qa_file)
    _cache["default_log"] = log
  return _cache["default"]
