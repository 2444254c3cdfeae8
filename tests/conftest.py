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
