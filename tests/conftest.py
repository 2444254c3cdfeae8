"""Test-wide setup. The environment lines must run before anything imports JAX or transformers:
XLA reads XLA_FLAGS when its backend starts and silently ignores a later change."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # accidental hub access fails at once
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(config, workdir) of one full pipeline run on configs/tiny.py, shared by the whole session."""
  import tiny_pipeline  # pylint: disable=import-outside-toplevel

  return tiny_pipeline.get(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_default_run(tmp_path_factory):
  """(config, workdir, qa_file) of one full run of configs/tiny.py:default (the offline default's code
  paths on a tiny model), shared by the whole session."""
  import tiny_pipeline  # pylint: disable=import-outside-toplevel

  return tiny_pipeline.get_default(tmp_path_factory)


# The fast lane (`make test-fast`: -m "not slow and not heavy") leaves out the tests marked `heavy`:
# every test that uses a pipeline-run fixture, and these (a test file, or a test without its parameters),
# which start subprocesses, train, or compile for seconds. An entry that matches no test of a collected
# file is an error, so the list follows renames.
PIPELINE_FIXTURES = frozenset({"tiny_run", "tiny_default_run"})
HEAVY = (
  "tests/runtime/test_slurm.py",
  "tests/test_pipeline.py",
  "tests/test_faults.py",
  "tests/test_package.py",
  "tests/extract/test_extract_stage.py",
  "tests/train/test_train_resume.py",
  "tests/train/test_train_parallel.py",
  "tests/train/test_train_stage.py",
  "tests/train/test_train_loop.py",
  "tests/tools/test_gpu_check.py",
  "tests/lm/test_lm_smollm2.py",
  "tests/lm/test_lm_gemma3.py",
  "tests/lm/test_lm_loading.py::test_pytorch_safetensors_tied_llama",
  "tests/lm/test_lm_loading.py::test_local_directory_round_trip",
  "tests/lm/test_lm_random.py::test_residuals_are_block_outputs",
  "tests/lm/test_lm_random.py::test_generate_matches_naive_loop",
  "tests/lm/test_lm_random.py::test_layer_subset",
  "tests/lm/test_lm_random.py::test_padding_does_not_change_real_tokens",
  "tests/lm/test_lm_random.py::test_logits_with_replacement",
  "tests/sae/test_sae_sparse.py::test_sparse_loss_and_grads_equal_dense",
  "tests/sae/test_sae_losses.py::test_jumprelu_l0_falls_within_a_few_hundred_steps",
  "tests/track/test_track_stage.py::test_stage_outputs_and_agreement",
  "tests/track/test_track_stage.py::test_uses_the_models_layer_subset_and_checks_saes",
  "tests/report/test_report.py::test_report_contents",
  "tests/report/test_dashboard.py::test_dashboard_in_headless_chromium",
  "tests/tools/test_planner.py::test_plan_flag_prints_and_starts_nothing",
  "tests/tools/test_planner.py::test_extract_peak_against_xla",
  "tests/tools/test_planner.py::test_train_peak_against_xla",
  "tests/tools/test_planner.py::test_cpu_plan_takes_the_train_peak_from_the_compiled_step",
  "tests/test_config_lib.py::test_cli_stops_at_once_on_misspelt_values",
  "tests/test_config_lib.py::test_cli_stops_at_once_on_a_missing_input",
)


def pytest_collection_modifyitems(config, items):
  heavy = pytest.mark.heavy
  used = set()
  files = set()
  for item in items:
    file, _, name = item.nodeid.partition("::")
    files.add(file)
    test = f"{file}::{name.split('[')[0]}"
    hits = {e for e in HEAVY if e in (file, test)}
    used |= hits
    if hits or PIPELINE_FIXTURES & set(item.fixturenames):
      item.add_marker(heavy)
  stale = [e for e in HEAVY if e.partition("::")[0] in files and e not in used]
  if stale:
    raise pytest.UsageError(f"tests/conftest.py HEAVY names tests that do not exist: {stale}")
