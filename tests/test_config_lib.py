"""config_lib: defaults in one place, every field checked by `validate` before any stage runs, the value
sets defined once, and a misspelt value stopped at once by the command line (not 40 minutes in)."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest
import tiny_pipeline

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import labelling, prompts
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect import classifiers
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import families
from ghosttrack_jax.runtime import layer_parallel
from ghosttrack_jax.sae import registry
from ghosttrack_jax.track import tracker

CONFIGS = sorted(glob.glob(os.path.join(tiny_pipeline.REPO, "configs", "*.py")))


def _load(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_validates(path):
  config_lib.validate(_load(path))


def test_every_field_is_checked():
  """A field of base_config that no rule checks fails here: give it a value set, a range or a rule."""
  c = config_lib.base_config()
  names = config_lib.field_names(c)
  bools = {n for n in names if isinstance(config_lib.get_field(c, n), bool)}
  checked = (
    set(config_lib.CHOICES) | set(config_lib.ELEMENT_CHOICES) | set(config_lib.RANGES)
    | set(config_lib.CHECKED_BY_RULE) | bools
  )  # fmt: skip
  assert sorted(set(names) - checked) == []
  assert sorted(checked - set(names)) == []  # no stale names in the tables


def test_value_sets_are_defined_once():
  """Every module that branches on a value set uses config_lib's (the same object or the same keys)."""
  assert tracker.POOLINGS is config_lib.POOLINGS and tracker.ASSOCIATIONS is config_lib.ASSOCIATIONS
  assert labelling.LABEL_METHODS is config_lib.LABEL_METHODS
  assert labelling.TRUTHFULQA_SIMILARITIES is config_lib.TRUTHFULQA_SIMILARITIES
  assert answer_stage.OWN_ANSWER_SETS + answer_stage.GIVEN_TEXT_SETS == config_lib.QA_DATASETS
  assert classifiers.CLASSIFIERS is config_lib.CLASSIFIERS
  assert layer_parallel.MODES is config_lib.PARALLEL_MODES
  assert tuple(families.FAMILIES) == config_lib.MODEL_FAMILIES
  assert tuple(registry.ARCHITECTURES) == config_lib.SAE_ARCHS
  for alias, method in config_lib.LABEL_METHOD_ALIASES.items():
    assert labelling.canonical_method(alias) == method
  with pytest.raises(ConfigError):
    labelling.canonical_method("contain")


class _Tok:
  chat_template = None


def test_prompt_styles_of_config_lib_are_the_ones_prompts_accepts():
  qa = config_lib.base_config().qa
  for style in config_lib.PROMPT_STYLES:
    if style not in ("chat", "stem"):  # chat needs a chat-template tokenizer (tests/answer)
      qa.prompt_style = style
      assert prompts.prompt_format(qa, _Tok()).style == "fewshot"
  qa.dataset = "wikidata"
  for style in ("stem", "auto"):  # wikidata's "auto" is stem completion, for any tokenizer
    qa.prompt_style = style
    assert prompts.prompt_format(qa, _Tok()).style == "stem"


# One bad value per kind of check: the problem names the field (and the allowed values for a set).
BAD = [
  ("tracking.pooling", "answer_maxx", "'answer_max', 'answer_mean', 'last_token', 'max_all'"),
  ("tracking.association", "hungarain", "'hungarian', 'greedy'"),
  ("qa.label_method", "contain", "'containment', 'exact'"),
  ("qa.dataset", "nq-open", "'wikidata', 'squad', 'jsonl', 'nq_open', 'truthfulqa'"),
  ("qa.prompt_style", "few-shot", "'stem', 'fewshot', 'chat', 'auto'"),
  ("sae.arch", "top_k", "'jumprelu', 'topk'"),
  ("sae_training.parallel", "pjit", "'pmap', 'shard_map'"),
  ("model.dtype", "fp16", "'float32', 'bfloat16', 'float16'"),
  ("model.family", "mistral", "'gpt2', 'llama'"),
  ("extract.storage_dtype", "float32", "'bfloat16', 'float16'"),
  ("qa.halueval_subset", "one_turn", "'one-turn'"),
  ("tracking.sweep_poolings", ("answer_mean", "mean"), "'mean' not allowed"),
  ("evaluate.classifiers", ("logistic", "rf"), "'rf' not allowed"),
  ("evaluate.classifiers", (), "non-empty"),
  ("sae_training.eval_fraction", 1.0, "in (0, 1)"),
  ("tracking.birth_threshold_quantile", 1.0, "in [0, 1)"),
  ("tracking.top_k", 0, ">= 1"),
  ("tracking.sweep_top_k", (10, 0), "every value >= 1"),
  ("evaluate.n_folds", 1, ">= 2"),
  ("evaluate.logistic_cs", (0.1, -1.0), "every value > 0"),
  ("sae.k", 10_000, "<= config.sae.width"),
  ("sae.threshold_init_l0", 10_000, "<= config.sae.width"),
  ("sae.bandwidth", 0.0, "> 0"),
  ("model.layers", (1, 0), "strictly increasing"),
  ("model.random.d_model", 66, "divisible by model.random.n_head"),
  ("model.random.n_positions", 16, ">= config.data.seq_len"),
  ("model.name", "a/b", "folder name"),
  ("data.corpus", "no/such/corpus.jsonl", "no such file"),
  ("data.corpus", "hf:wikitext", "hf:<dataset>:<split>"),
  ("model.source", "/no/such/model.gguf", "no such file or folder"),
  ("model.tokenizer", "./no_such_tokenizer", "no such file or folder"),
  ("qa.fewshot_file", "data/qa/missing.jsonl", "no such file"),
]


@pytest.mark.parametrize("field,value,allowed", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_a_bad_value_is_named_with_what_is_allowed(field, value, allowed):
  c = tiny_pipeline.tiny_config(**{field: value})
  found = config_lib.problems(c)
  assert len(found) == 1, found
  assert found[0].startswith(f"config.{field}") and allowed in found[0], found[0]
  with pytest.raises(ConfigError, match=f"config.{field}"):
    config_lib.validate(c)


def test_qa_files_checked_for_the_dataset_that_reads_them():
  for dataset, field in (("nq_open", "qa.nq_open_file"), ("truthfulqa_given", "qa.truthfulqa_file")):
    c = tiny_pipeline.tiny_config(**{"qa.dataset": dataset, field: "data/qa/missing.csv"})
    assert [p.split("=")[0] for p in config_lib.problems(c)] == [f"config.{field}"]
  # halueval_given reads neither: a missing NQ file is no problem for it
  c = tiny_pipeline.tiny_config(**{"qa.nq_open_file": "data/qa/missing.jsonl"})
  assert config_lib.problems(c) == []


def test_inputs_are_checked_only_for_the_stages_that_read_them():
  c = tiny_pipeline.tiny_config(**{"data.corpus": "no/such/corpus.jsonl", "qa.fewshot_file": "missing"})
  assert len(config_lib.problems(c)) == 2
  assert len(config_lib.problems(c, stages=("extract",))) == 1  # the corpus
  assert len(config_lib.problems(c, stages=("answer",))) == 1  # the exemplars
  assert config_lib.problems(c, stages=("detect", "evaluate", "report")) == []
  c.tracking.pooling = "sum"  # values are checked whatever the stages
  assert len(config_lib.problems(c, stages=())) == 1


def _main(tmp_path, *overrides):
  workdir = tmp_path / "run"
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={tiny_pipeline.CONFIG}",
    f"--workdir={workdir}",
  ]
  proc = subprocess.run(
    cmd + [f"--config.{o}" for o in overrides],
    cwd=tiny_pipeline.REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  return proc, workdir


def test_cli_stops_at_once_on_misspelt_values(tmp_path):
  """The five misspellings that used to surface only at the track stage: all named, nothing run."""
  misspelt = {
    "tracking.pooling": "answer_maxx",
    "tracking.association": "hungarain",
    "qa.label_method": "contain",
    "qa.dataset": "nq-open",
    "qa.prompt_style": "few-shot",
  }
  proc, workdir = _main(tmp_path, *(f"{k}={v}" for k, v in misspelt.items()))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "ConfigError: 5 config problem(s), nothing was run" in proc.stderr
  for field, value in misspelt.items():
    allowed = dict((f, a) for f, _, a in BAD)[field]
    assert f"config.{field}={value!r}: use one of {allowed}" in proc.stderr, field
  assert "=== stage" not in proc.stderr and not workdir.exists()  # no stage started


def test_cli_stops_at_once_on_a_missing_input(tmp_path):
  proc, workdir = _main(tmp_path, "data.corpus=data/corpus/missing.jsonl.gz")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "config.data.corpus='data/corpus/missing.jsonl.gz': no such file" in proc.stderr
  assert "=== stage" not in proc.stderr and not workdir.exists()
