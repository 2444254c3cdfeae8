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

Several processes (`jax.distributed`, one per GPU under srun): the devices are all processes' devices,
taken round-robin over processes so that even a few layers spread over every process; the map is
shard_map over that global mesh (pmap only maps a process's own devices). Each process reads and puts
only the blocks of its own devices (`local_indices`), and `get` gathers every slot to every process.
"""

import dataclasses
import logging
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError

MODES = config_lib.PARALLEL_MODES  # the value set lives in config_lib
AXIS = "layer"  # the mesh axis of the stacked layers (shard_map) or devices (pmap)


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

  @property
  def local_indices(self) -> list[int]:
    """Indices (into `devices`) of this process's devices: the blocks this process reads and puts."""
    me = jax.process_index()
    return [i for i, d in enumerate(self.devices) if d.process_index == me]

  @property
  def multi_process(self) -> bool:
    return any(d.process_index != jax.process_index() for d in self.devices)

  def any_process(self, flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective with several processes)."""
    if not self.multi_process:
      return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))))

  def gather_local_slots(self, local: np.ndarray) -> np.ndarray:
    """[len(local_indices) * per_device, ...] rows of this process's slots -> [n_padded, ...] on every
    process (a collective with several processes)."""
    if not self.multi_process:
      return np.asarray(local)
    by_process: dict = {}
    for i, d in enumerate(self.devices):
      by_process.setdefault(d.process_index, []).append(i)
    width = max(len(v) for v in by_process.values()) * self.per_device
    local = np.asarray(local)
    padded = np.zeros((width,) + local.shape[1:], local.dtype)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [n_processes, width, ...]
    out = np.zeros((self.n_padded,) + local.shape[1:], local.dtype)
    for p, indices in by_process.items():
      slots = [s for i in indices for s in self.device_slots(i)]
      out[slots] = gathered[p, : len(slots)]
    return out

  # ---- host <-> device -----------------------------------------------------------------------------

  @property
  def platform(self) -> str:
    """The devices' platform ("cpu", "gpu", "tpu"): decides which step variant runs (train.step)."""
    return self.devices[0].platform

  def _mesh(self):
    # Mesh() keeps the devices in the given order (make_mesh may reorder them for the topology); pmap
    # builds the same mesh internally, with the axis name given to jax.pmap in `map_step`.
    return Mesh(np.asarray(self.devices), (AXIS,), axis_types=(AxisType.Auto,))

  @property
  def sharding(self) -> NamedSharding:
    """Of every device-form array (leading axis: layers, or [devices, per_device] in pmap mode)."""
    return NamedSharding(self._mesh(), P(AXIS))

  def put(self, host_tree: Any) -> Any:
    """Host tree with leaves [n_padded, ...] -> the device form this mode's step takes (explicit
    transfers only: the step then runs under `jax.transfer_guard("disallow")`)."""
    if self.mode == "pmap":
      host_tree = jax.tree_util.tree_map(
        lambda a: np.asarray(a).reshape((self.n_devices, self.per_device) + np.shape(a)[1:]), host_tree
      )
      if self.n_devices == 1:
        return jax.device_put(host_tree, self.devices[0])
      return jax.device_put(host_tree, self.sharding)
    if self.multi_process:  # each process places the slices of its own devices
      return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(
          np.shape(a), self.sharding, lambda index, a=a: np.asarray(a)[index]
        ),
        host_tree,
      )
    return jax.device_put(host_tree, self.sharding)

  def put_blocks(self, blocks: Sequence[np.ndarray]) -> Any:
    """Host blocks ([per_device, ...] each) of this process's devices (`local_indices`, which is every
    device in one process), already read per device -> device form. Each block goes to its device with
    an explicit transfer, without stacking them on the host first.

    On CPU a put may alias the block's memory, and on GPU it is an asynchronous copy: the caller must
    not overwrite a block before the step that consumes it has finished.
    """
    local = [self.devices[i] for i in self.local_indices]
    if self.mode == "pmap":
      if self.n_devices == 1:
        return jax.device_put(blocks[0][None], local[0])
      shape = (self.n_devices,) + blocks[0].shape
      arrays = [jax.device_put(b[None], d) for b, d in zip(blocks, local)]
      return jax.make_array_from_single_device_arrays(shape, self.sharding, arrays)
    shape = (self.n_padded,) + blocks[0].shape[1:]
    arrays = [jax.device_put(b, d) for b, d in zip(blocks, local)]
    return jax.make_array_from_single_device_arrays(shape, self.sharding, arrays)

  def get(self, device_tree: Any) -> Any:
    """Device form -> host numpy tree with leaves [n_padded, ...] (gathered to every process)."""
    if self.multi_process:
      return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(device_tree, tiled=True))
    host = jax.device_get(device_tree)
    if self.mode == "pmap":
      return jax.tree_util.tree_map(lambda a: np.asarray(a).reshape((self.n_padded,) + a.shape[2:]), host)
    return jax.tree_util.tree_map(np.asarray, host)

  # ---- the step --------------------------------------------------------------------------------------

  def map_step(self, block_step: Callable) -> Callable:
    """block_step(states [l, ...], batch [l, ...]) -> (states, metrics), mapped over the devices.

    The state argument is donated.
    """
    if self.n_devices == 1:
      # One device: the same block program under plain jit (pmap over one device only adds dispatch
      # overhead). The device form keeps its leading device axis of size 1 in pmap mode.
      if self.mode == "pmap":
        squeeze = lambda t: jax.tree_util.tree_map(lambda a: a[0], t)
        expand = lambda t: jax.tree_util.tree_map(lambda a: a[None], t)
        return jax.jit(lambda st, x: expand(block_step(squeeze(st), squeeze(x))), donate_argnums=0)
      return jax.jit(block_step, donate_argnums=0)
    if self.mode == "pmap":
      return jax.pmap(block_step, devices=self.devices, donate_argnums=0, axis_name=AXIS)
    # check_vma=False: the FFI kernels' outputs carry no varying-manual-axes type; every value in the
    # block program is per-device anyway (no collectives).
    mapped = jax.shard_map(
      block_step,
      mesh=self._mesh(),
      in_specs=(P(AXIS), P(AXIS)),
      out_specs=(P(AXIS), P(AXIS)),
      check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


def make_layout(
  n_layers: int, mode: str = "pmap", n_devices: int = 0, pad: bool = True, devices: Sequence | None = None
) -> LayerLayout:
  """Chooses the devices and checks that the layers can be spread over them."""
  if mode not in MODES:
    raise ConfigError(f"config.sae_training.parallel={mode!r}: use one of {MODES}")
  if devices is not None:
    available = list(devices)
  elif jax.process_count() > 1:
    # Round-robin over processes: the first n devices cover as many processes as possible.
    by_process: dict = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
      by_process.setdefault(d.process_index, []).append(d)
    rounds = max(len(v) for v in by_process.values())
    available = [v[r] for r in range(rounds) for _, v in sorted(by_process.items()) if r < len(v)]
  else:
    available = jax.local_devices()
  n = n_devices or len(available)
  if n > len(available):
    raise ConfigError(
      f"config.sae_training.devices={n_devices} but only {len(available)} "
      "devices exist: lower it, or 0 for all"
    )
  n = max(1, min(n, n_layers))  # never more devices than layers
  if jax.process_count() > 1 and devices is None:
    if n < jax.process_count():
      raise ConfigError(
        f"{n_layers} layer(s) on {n} device(s) cannot occupy all {jax.process_count()} "
        f"processes (each needs one): start at most {n} srun tasks, or leave "
        "config.sae_training.devices at 0"
      )
    if mode == "pmap":
      logging.info(
        "%d processes: mapping the layers with shard_map over the global mesh (pmap maps "
        "only one process's devices)",
        jax.process_count(),
      )
      mode = "shard_map"
  if n_layers % n and not pad:
    divisors = [d for d in range(n, 0, -1) if n_layers % d == 0]
    raise ConfigError(
      f"{n_layers} layers do not divide over {n} devices: set config.sae_training.devices="
      f"{divisors[0]} (a divisor of {n_layers}), or config.sae_training.pad_layers=True to pad "
      f"with {math.ceil(n_layers / n) * n - n_layers} dummy layers"
    )
  return LayerLayout(n_layers=n_layers, mode=mode, devices=tuple(available[:n]))
