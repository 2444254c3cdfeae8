"""A user's own question file (`--config.qa.dataset=jsonl --config.qa.path=...`) through the answer..report
stages of a real tiny run; bad question files stop before any stage and leave finished outputs as they are."""

import json
import os
import shutil

import tiny_pipeline

from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import labelling
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.runtime import atomic_io, paths

STAGES = "answer,track,detect,evaluate,report"


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def _tree_digest(directory):
  return {
    os.path.relpath(os.path.join(d, f), directory): atomic_io.file_sha256(os.path.join(d, f))
    for d, _, files in os.walk(directory)
    for f in files
  }


def test_a_jsonl_question_file_runs_end_to_end_and_bad_files_stop_early(tiny_run, tmp_path):
  _, run_dir = tiny_run  # its config object is shared by the session: never modified here
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)  # the store, SAEs and the tiny run's own (halueval) results
  qa = str(tmp_path / "mine.jsonl")
  with open(os.path.join(tiny_pipeline.REPO, "data", "qa", "NQ-open.dev.jsonl"), encoding="utf-8") as f:
    nq = [json.loads(line) for line, _ in zip(f, range(24))]  # varied questions: varied random answers
  rows = [{"question": r["question"], "answers": r["answer"], "id": f"q{i}"} for i, r in enumerate(nq)]
  rows[3]["context"] = "A passage the model reads before question 3."
  _write(qa, rows)
  flags = (
    "--config.qa.dataset=jsonl",
    f"--config.qa.path={qa}",
    "--config.qa.exclude_non_answers=False",
    "--config.qa.exclude_cut_answers=False",  # a random model rarely ends an answer by itself
  )
  tiny_pipeline.run_pipeline(workdir, stages="answer", flags=flags)
  config = tiny_pipeline.tiny_config(**{"qa.dataset": "jsonl", "qa.path": qa})
  # A random model never says the gold: make its own answer the gold of every other question with a
  # wordy answer, so both classes are present; the saved generations are reused when the stage reruns.
  said = {e["id"]: e["answer_text"] for e in examples_lib.load_examples(config, workdir)}
  for i, r in enumerate(rows):
    if i % 2 == 0 and labelling.normalize_answer(said.get(f"jsonl-q{i}", "")):
      r["answers"] = [said[f"jsonl-q{i}"]]
  _write(qa, rows)
  atomic_io.clear_done(paths.for_config(config, workdir).answers("jsonl"))
  tiny_pipeline.run_pipeline(workdir, stages=STAGES, flags=flags)

  examples = examples_lib.load_examples(config, workdir)
  assert {e["id"] for e in examples} <= {f"jsonl-q{i}" for i in range(24)}
  assert {e["label"] for e in examples} == {0, 1}
  manifest = examples_lib.load_manifest(config, workdir)
  assert list(manifest["data_files"])[0] == qa and manifest["prompt"]["style"] == "fewshot"
  metrics = evaluate_stage.load_metrics(evaluate_stage.directory(config, workdir, "jsonl"))
  assert (
    "ghosttrack/logistic" in metrics["methods"] and "question_only/relation_and_words" in metrics["methods"]
  )
  report = os.path.join(paths.for_config(config, workdir).evaluation, "report.md")
  assert "## jsonl" in open(report, encoding="utf-8").read()

  answers = paths.for_config(config, workdir).answers("jsonl")
  before = _tree_digest(os.path.join(workdir, "results"))
  bad = str(tmp_path / "bad.jsonl")
  for text, message in (
    ('{"question": "q?"}\n', "bad.jsonl line 1: 'answers' must be a non-empty list of strings"),
    ("", "bad.jsonl is empty"),
  ):
    with open(bad, "w", encoding="utf-8") as f:
      f.write(text)
    proc = tiny_pipeline.main_process(workdir, "--config.qa.dataset=jsonl", f"--config.qa.path={bad}")
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "=== stage" not in proc.stderr  # stopped before any stage, extraction included
  proc = tiny_pipeline.main_process(
    workdir, "--config.qa.dataset=jsonl", f"--config.qa.path={tmp_path / 'missing.jsonl'}"
  )
  assert proc.returncode == 2 and "missing.jsonl" in proc.stderr and "no such file" in proc.stderr
  # a good file with other questions does not reuse (or overwrite) the finished answers of this one
  _write(bad, rows[:10])
  proc = tiny_pipeline.main_process(workdir, "--config.qa.dataset=jsonl", f"--config.qa.path={bad}")
  assert proc.returncode != 0 and "holds the answers to other questions" in proc.stderr, proc.stderr[-2000:]
  assert _tree_digest(os.path.join(workdir, "results")) == before and atomic_io.is_done(answers)
