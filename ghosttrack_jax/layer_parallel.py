"""The ONE place where the stacked layer axis is mapped onto devices.

Every per-layer SAE array is stacked on a leading `layer` axis. Each device holds a contiguous block of
`per_device` layers and runs one program that `vmap`s the per-layer step over its block. Across devices:

  pmap (default, `config.sae_training.parallel="pmap"`): host trees are reshaped to
      [n_devices, per_device, ...] and the block program is `jax.pmap`ped.
  shard_map: host trees stay [n_padded, ...] and are sharded `P("layer")` on a 1-D mesh; the block
      program runs under `jax.jit(jax.shard_map(...))`.

Both run the same block program on the same blocks, so they give identical parameters (tested on 4
simulated CPU devices). A layer count that the device count does not divide is padded with dummy layers
(`valid` is False for them) that train on a copy of the last real layer's data and are dropped from
metrics, checks, checkpoints and exports; with `pad_layers=False` it is an error that names the fix.
"""

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ghosttrack_jax.errors import ConfigError

MODES = ("pmap", "shard_map")


@dataclasses.dataclass(frozen=True)
class LayerLayout:
  """Which layers live on which device."""

  n_layers: int  # real layers
  mode: str  # "pmap" | "shard_map"
  devices: tuple  # jax devices, in order

  @property
  def n_devices(self) -> int:
    return len(self.devices)

  @property
  def per_device(self) -> int:
    return math.ceil(self.n_layers / self.n_devices)

  @property
  def n_padded(self) -> int:
    return self.per_device * self.n_devices

  @property
  def valid(self) -> np.ndarray:
    """[n_padded] bool: False for dummy (padding) layers."""
    return np.arange(self.n_padded) < self.n_layers

  def source(self, slot: int) -> int:
    """The real layer position whose data padded slot `slot` trains on."""
    return min(slot, self.n_layers - 1)

  def device_slots(self, device_index: int) -> range:
    return range(device_index * self.per_device, (device_index + 1) * self.per_device)

  def device_sources(self, device_index: int) -> list[int]:
    """Real layer positions (with repeats for padding) whose rows device `device_index` reads."""
    return [self.source(s) for s in self.device_slots(device_index)]

  # ---- host <-> device -----------------------------------------------------------------------------

  def _mesh(self):
    return jax.make_mesh((self.n_devices,), ("layer",), axis_types=(AxisType.Auto,),
                         devices=self.devices)

  def put(self, host_tree: Any) -> Any:
    """Host tree with leaves [n_padded, ...] -> the device form this mode's step takes."""
    if self.mode == "pmap":
      return jax.tree_util.tree_map(
          lambda a: np.asarray(a).reshape((self.n_devices, self.per_device) + np.shape(a)[1:]),
          host_tree)
    sharding = NamedSharding(self._mesh(), P("layer"))
    return jax.device_put(host_tree, sharding)

  def put_blocks(self, blocks: Sequence[np.ndarray]) -> Any:
    """Per-device host blocks ([per_device, ...] each, already read per device) -> device form."""
    if self.mode == "pmap":
      return np.stack(blocks)
    sharding = NamedSharding(self._mesh(), P("layer"))
    shape = (self.n_padded,) + blocks[0].shape[1:]
    arrays = [jax.device_put(b, d) for b, d in zip(blocks, self.devices)]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)

  def get(self, device_tree: Any) -> Any:
    """Device form -> host numpy tree with leaves [n_padded, ...]."""
    host = jax.device_get(device_tree)
    if self.mode == "pmap":
      return jax.tree_util.tree_map(lambda a: np.asarray(a).reshape((self.n_padded,) + a.shape[2:]),
                                    host)
    return jax.tree_util.tree_map(np.asarray, host)

  # ---- the step --------------------------------------------------------------------------------------

  def map_step(self, block_step: Callable) -> Callable:
    """block_step(states [l, ...], batch [l, ...]) -> (states, metrics), mapped over the devices.

    The state argument is donated.
    """
    if self.mode == "pmap":
      return jax.pmap(block_step, devices=self.devices, donate_argnums=0)
    # check_vma=False: the FFI kernels' outputs carry no varying-manual-axes type; every value in the
    # block program is per-device anyway (no collectives).
    mapped = jax.shard_map(block_step, mesh=self._mesh(), in_specs=(P("layer"), P("layer")),
                           out_specs=(P("layer"), P("layer")), check_vma=False)
    return jax.jit(mapped, donate_argnums=0)


def make_layout(n_layers: int, mode: str = "pmap", n_devices: int = 0, pad: bool = True,
                devices: Sequence | None = None) -> LayerLayout:
  """Chooses the devices and checks that the layers can be spread over them."""
  if mode not in MODES:
    raise ConfigError(f"config.sae_training.parallel={mode!r}: use one of {MODES}")
  if jax.process_count() > 1:
    raise ConfigError("SAE training runs in one process (layers are independent): start it without "
                      "srun, or give each process its own config.model.layers and workdir")
  available = list(devices) if devices is not None else jax.local_devices()
  n = n_devices or len(available)
  if n > len(available):
    raise ConfigError(f"config.sae_training.devices={n_devices} but only {len(available)} local "
                      "devices exist: lower it, or 0 for all")
  n = max(1, min(n, n_layers))  # never more devices than layers
  if n_layers % n and not pad:
    divisors = [d for d in range(n, 0, -1) if n_layers % d == 0]
    raise ConfigError(
        f"{n_layers} layers do not divide over {n} devices: set config.sae_training.devices="
        f"{divisors[0]} (a divisor of {n_layers}), or config.sae_training.pad_layers=True to pad "
        f"with {math.ceil(n_layers / n) * n - n_layers} dummy layers")
  return LayerLayout(n_layers=n_layers, mode=mode, devices=tuple(available[:n]))
