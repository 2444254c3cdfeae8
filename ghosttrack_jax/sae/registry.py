"""The explicit name -> architecture registry (no string imports), and the one place an architecture is
looked up by its name: `build`, which `from_config` calls with config.sae and sae.trained with what an
export records. Everything else holds the architecture object these return."""

import dataclasses

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.sae import batchtopk, common, jumprelu, relu_l1, topk

ARCHITECTURES: dict[str, type[common.Architecture]] = {
  cls.name: cls for cls in (jumprelu.JumpReLU, topk.TopK, batchtopk.BatchTopK, relu_l1.ReluL1)
}


def build(name: str, **fields) -> common.Architecture:
  """The architecture `name` with those of `fields` it has (each cast to its field's type; the others,
  another architecture's, are ignored)."""
  try:
    cls = ARCHITECTURES[name]
  except KeyError:
    raise ConfigError(f"config.sae.arch={name!r}: use one of {sorted(ARCHITECTURES)}") from None
  types = {f.name: f.type for f in dataclasses.fields(cls)}
  return cls(**{k: types[k](v) for k, v in fields.items() if k in types})


def from_config(config, d_model: int) -> common.Architecture:
  """config.sae's architecture with its hyper-parameters, for inputs of width d_model.

  The COO capacity comes from sae_training.sparse_capacity ("auto" backward keeps it here;
  train.step.for_platform turns it off where the step runs dense)."""
  t = config.sae_training
  fields = dict(config.sae.to_dict())
  fields.update(d_model=d_model, sparse_capacity=t.sparse_capacity if t.backward != "dense" else 0)
  return build(config.sae.arch, **fields)


def config_problems(sae_config) -> list[str]:
  """config_lib.validate's architecture-specific checks (none for an unknown name: its value set
  reports it)."""
  cls = ARCHITECTURES.get(sae_config.arch)
  return cls.config_problems(sae_config) if cls else []
