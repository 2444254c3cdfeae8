"""The explicit name -> architecture registry selected by `config.sae.arch` (no string imports)."""

import dataclasses
import math
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

  The training recipe (docs/sae_recipes.md), read by train.step and train.loop so that they never
  branch on the name:
  recipe_lr(width): the peak learning rate of `sae_training.lr_rule="recipe"` (None: sae_training.lr).
  adam_b1, adam_eps: Adam's first-moment decay and epsilon (b2 is 0.999 everywhere).
  projects_decoder_grads: remove the gradient component along each decoder row before the update.
  renormalise_every: steps between decoder-row renormalisations (1: after every update).
  cosine_per_epoch: the learning rate anneals to 0 per epoch (the original) instead of warm-up/decay.
  ema_batch_threshold: keeps the EMA inference threshold of BatchTopK in the training state.
  threshold_from_data: per-latent thresholds start at a quantile of the first batch
    (`sae.threshold_init_l0` > 0).
  """

  name: str
  loss: Callable
  encode: Callable
  coo_threshold: Callable | None
  export_arch: str
  dynamic_count: bool
  has_aux_k: bool
  recipe_lr: Callable[[int], float | None] = lambda width: None
  adam_b1: float = 0.9
  adam_eps: float = 1e-8
  projects_decoder_grads: bool = True
  renormalise_every: int = 1
  cosine_per_epoch: bool = False
  ema_batch_threshold: bool = False
  threshold_from_data: bool = False


def _sparsify_lr(width: int) -> float:
  """TopK/BatchTopK (sparsify): 2e-4 / sqrt(width / 2^14)."""
  return 2e-4 / math.sqrt(width / 2**14)


ARCHITECTURES = {
  # Gemma Scope's JumpReLU: Adam without momentum, thresholds from data when asked.
  "jumprelu": Architecture(
    "jumprelu",
    jumprelu.loss,
    jumprelu.encode,
    jumprelu.coo_threshold,
    "jumprelu",
    dynamic_count=True,
    has_aux_k=False,
    adam_b1=0.0,
    threshold_from_data=True,
  ),
  "topk": Architecture(
    "topk",
    topk.loss,
    topk.encode,
    None,
    "topk",
    dynamic_count=False,
    has_aux_k=True,
    recipe_lr=_sparsify_lr,
    adam_eps=6.25e-10,
  ),
  "batchtopk": Architecture(
    "batchtopk",
    topk.loss,
    topk.encode,
    topk.coo_threshold,
    "jumprelu",
    dynamic_count=True,
    has_aux_k=True,
    recipe_lr=_sparsify_lr,
    adam_eps=6.25e-10,
    ema_batch_threshold=True,
  ),
  # The original PyTorch GhostTrack: lr 1e-4 annealed per epoch, no gradient projection, decoder rows
  # renormalised every 100 steps.
  "relu_l1": Architecture(
    "relu_l1",
    relu_l1.loss,
    relu_l1.encode,
    relu_l1.coo_threshold,
    "jumprelu",
    dynamic_count=True,
    has_aux_k=False,
    recipe_lr=lambda width: 1e-4,
    projects_decoder_grads=False,
    renormalise_every=relu_l1.DECODER_RENORM_EVERY,
    cosine_per_epoch=True,
  ),
}


def get(name: str) -> Architecture:
  try:
    return ARCHITECTURES[name]
  except KeyError:
    raise ConfigError(f"config.sae.arch={name!r}: use one of {sorted(ARCHITECTURES)}") from None
