"""Trained SAEs as the later stages use them (docs/DESIGN.md, "Trained SAEs"): `TrainedSAEs` and
`load_trained_saes`, which reads the SAELens export of a completed train stage, or the SAEs trained
elsewhere that `config.sae.source` names (`sae.external`)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import IncompleteStoreError
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.sae import common, export, external, registry


class TrainedSAEs:
  """Every layer's trained SAE, stacked (docs/DESIGN.md, "Trained SAEs").

  `params` are in export form (the input scale folded in, as in the SAELens files): raw residuals go in,
  `(x_raw - b_dec*) @ W_enc + b_enc` (*: only when `apply_b_dec_to_input`) equals the training
  pre-activations of `s * x_raw`, so codes are in scaled-input units (E||s x||^2 = 1) and `decode`
  returns raw units. `input_scale` [L] is s.
  """

  def __init__(
    self,
    arch: str,
    layers: list[int],
    params: dict,
    input_scale: np.ndarray,
    k: int,
    manifest_hash: str = "",
    apply_b_dec_to_input: bool | None = None,
  ):
    self.arch = arch
    self.layers = list(layers)
    self.params = params
    self.input_scale = np.asarray(input_scale, np.float32)
    self.k = int(k)
    self.manifest_hash = manifest_hash
    self.architecture = registry.build(
      arch,
      d_model=int(params["W_enc"].shape[1]),
      width=int(params["W_enc"].shape[2]),
      k=int(k),
      b_dec_to_input=bool(apply_b_dec_to_input),
    )
    applies = self.architecture.applies_b_dec_to_input
    if apply_b_dec_to_input is not None and applies != apply_b_dec_to_input:
      raise ValueError(f"{arch} SAEs with apply_b_dec_to_input={apply_b_dec_to_input} are not supported")
    self._encode = jax.jit(jax.vmap(self.architecture.codes))
    self._decode = jax.jit(jax.vmap(self.architecture.decode))

  @property
  def apply_b_dec_to_input(self) -> bool:
    """True when codes are computed from x - b_dec (TopK/BatchTopK, and JumpReLU with
    config.sae.b_dec_to_input): pre = (x_raw - b_dec) @ W_enc + b_enc with these params."""
    return self.architecture.applies_b_dec_to_input

  def encode(self, x_raw) -> jax.Array:
    """[L, N, D] raw residuals -> [L, N, M] codes (scaled-input units)."""
    return self._encode(self.params, jnp.asarray(x_raw))

  def decode(self, codes) -> jax.Array:
    """[L, N, M] codes -> [L, N, D] reconstructions in raw units."""
    return self._decode(self.params, jnp.asarray(codes, jnp.float32))

  def layer_index(self, layer: int) -> int:
    return self.layers.index(int(layer))

  def subset(self, layers) -> "TrainedSAEs":
    """The SAEs of `layers` only (same architecture settings), e.g. one layer for exploration."""
    idx = [self.layer_index(l) for l in layers]
    return TrainedSAEs(
      self.arch,
      [self.layers[i] for i in idx],
      {k: np.asarray(v)[idx] for k, v in self.params.items()},
      self.input_scale[idx],
      self.k,
      self.manifest_hash,
      apply_b_dec_to_input=self.apply_b_dec_to_input,
    )


def load_trained_saes(config, workdir: str) -> TrainedSAEs:
  """The SAEs of `config.sae.source` when set, else the exported SAEs of a completed train stage
  (IncompleteStoreError if there are none)."""
  if config.sae.source:
    return TrainedSAEs(**external.load(config))
  mp = paths.for_config(config, workdir)
  if not atomic_io.is_done(mp.sae_results) or not atomic_io.is_done(mp.sae_export):
    raise IncompleteStoreError(
      f"no trained SAEs for model {config.model.name!r} under {workdir} "
      "(train stage not complete): run --stages=train"
    )
  done = atomic_io.read_json(os.path.join(mp.sae_export, atomic_io.DONE))
  layers = [int(l) for l in done["layers"]]
  loaded = [export.read_saelens(os.path.join(mp.sae_export, f"layer_{l:02d}")) for l in layers]
  params = {k: np.stack([p[k] for p, _ in loaded]) for k in common.PARAM_NAMES}
  cfg0 = loaded[0][1]
  gt = cfg0["metadata"].get("ghosttrack", {})
  scales = np.asarray(
    [c["metadata"].get("ghosttrack", {}).get("input_scale", 1.0) for _, c in loaded], np.float32
  )
  return TrainedSAEs(
    arch=gt.get("arch", cfg0["architecture"]),
    layers=layers,
    params=params,
    input_scale=scales,
    k=int(cfg0.get("k", gt.get("k", 0)) or 0),
    manifest_hash=done.get("sha256", ""),
    apply_b_dec_to_input=bool(cfg0["apply_b_dec_to_input"]),
  )
