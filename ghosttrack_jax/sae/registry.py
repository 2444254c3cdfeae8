"""The explicit name -> architecture registry selected by `config.sae.arch` (no string imports)."""

import dataclasses
from typing import Callable

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.sae import jumprelu, relu_l1, topk


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the trainer, evaluator and exporter need to know about one SAE family.

  loss(hyper, params, x, pre, ctx, coo=None) -> (loss, aux metrics): per layer, vmappable.
  coo_threshold(hyper, params, pre) -> [M]: entries with pre > threshold form the sparse path's COO
    list (None: the list comes from per-token top-k indices).
  encode(hyper, params, pre, state) -> [N, M] inference codes from pre-activations.
  export_arch: SAELens architecture name ("jumprelu" or "topk").
  dynamic_count: the number of COO entries varies per step, so the sparse path needs a capacity check.
  """

  name: str
  loss: Callable
  encode: Callable
  coo_threshold: Callable | None
  export_arch: str
  dynamic_count: bool
  has_aux_k: bool


ARCHITECTURES = {
  "jumprelu": Architecture(
    "jumprelu",
    jumprelu.loss,
    jumprelu.encode,
    jumprelu.coo_threshold,
    "jumprelu",
    dynamic_count=True,
    has_aux_k=False,
  ),
  "topk": Architecture("topk", topk.loss, topk.encode, None, "topk", dynamic_count=False, has_aux_k=True),
  "batchtopk": Architecture(
    "batchtopk", topk.loss, topk.encode, topk.coo_threshold, "jumprelu", dynamic_count=True, has_aux_k=True
  ),
  "relu_l1": Architecture(
    "relu_l1",
    relu_l1.loss,
    relu_l1.encode,
    relu_l1.coo_threshold,
    "jumprelu",
    dynamic_count=True,
    has_aux_k=False,
  ),
}


def get(name: str) -> Architecture:
  try:
    return ARCHITECTURES[name]
  except KeyError:
    raise ConfigError(f"config.sae.arch={name!r}: use one of {sorted(ARCHITECTURES)}") from None
