"""Sizes a run before any work (`python -m ghosttrack_jax.main --config=... --plan`).

For one config it works out, without loading weights or touching the workdir:
  - model and SAE parameter memory (the SAE train state: parameters and Adam moments);
  - the activation store, per layer and in total, and the rest of the disk the run will write;
  - layers per device, and the peak device memory per device of every stage for the configured batch
    sizes (analytic buffer counts; `tests/tools/test_planner.py` checks them against XLA's buffer assignment
    and against a real tiny run);
  - a wall-time estimate from throughput measured here: a proxy transformer block and a proxy SAE
    step at the run's shapes, timed on this machine's first device (on a login node, pass the target
    node's figures with --plan_devices / --plan_device_memory_gib; the times then describe this
    machine's device, so run --plan on the target node for a cluster time estimate);
  - warnings when the disk or device memory will not suffice, and batch sizes that fit (halving the
    configured one until the peak fits in 90% of a device).
"""

import dataclasses
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import optax

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import shapes
from ghosttrack_jax.sae import common, registry
from ghosttrack_jax.train import step as train_step

GiB = 1024**3
_FIT = 0.9  # a stage "fits" when its peak uses at most this fraction of a device
_PROMPT_TOKENS = 160  # assumed QA prompt length (5-shot NQ prompt with the GPT-2 tokenizer: ~150 tokens)
# Per stage: imports, model load, compilation, and for `train` the evaluation and export (measured on
# 2 CPU cores with configs/tiny.py, where these are nearly all of the time).
_STARTUP_S = {"extract": 15.0, "train": 30.0, "answer": 15.0, "track": 15.0}
_IO_BYTES_PER_S = 500e6  # assumed store write/read rate (local NVMe or a parallel filesystem)
_CKPT_KEPT = 2  # Orbax checkpoints kept on disk at a time


# The model's shapes (lm.shapes owns them; re-exported for the planner's callers).
Arch = shapes.Arch
architecture = shapes.architecture


def model_param_count(a: Arch) -> int:
  """Parameters of the Flax LM exactly as the loader builds it."""
  D, F, L, V = a.d_model, a.d_ff, a.n_layers, a.vocab
  if a.family == "gpt2":
    block = (D * 3 * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D) + 4 * D  # attn, mlp, 2 LNs
    total = V * D + a.n_positions * D + L * block + 2 * D
  elif a.family == "gemma3":  # q,o,k,v, mlp, 4 norms around attention and MLP, q/k norms
    hd = a.hd
    block = D * a.n_heads * hd * 2 + D * a.n_kv_heads * hd * 2 + 3 * D * F + 4 * D + 2 * hd
    total = V * D + L * block + D
  else:
    hd = D // a.n_heads
    block = D * a.n_heads * hd * 2 + D * a.n_kv_heads * hd * 2 + 3 * D * F + 2 * D  # q,o,k,v,mlp,norms
    total = V * D + L * block + D
  return total + (0 if a.tied else V * D)


def sae_param_count(d_model: int, width: int) -> int:
  """W_enc [D, M] + b_enc [M] + W_dec [M, D] + b_dec [D] + threshold [M], for one layer."""
  return 2 * d_model * width + 2 * width + d_model


def _dtype_bytes(name: str) -> int:
  return 2 if name in ("bfloat16", "float16") else 4


def store_geometry(config, n_layers: int, d_model: int) -> dict:
  """Rows and bytes of the activation store exactly as `extract` lays it out."""
  T = config.data.seq_len
  n_windows = math.ceil(config.data.n_tokens / (T - 1))
  n_rows = n_windows * (T - 1)
  # extract.py flushes whole batches that fill about one chunk, and zarr stores the last chunk whole.
  rows_per_batch = config.extract.batch_size * (T - 1)
  chunk_rows = min(max(1, round(config.extract.chunk_rows / rows_per_batch)) * rows_per_batch, n_rows)
  stored_rows = math.ceil(n_rows / chunk_rows) * chunk_rows
  per_layer = stored_rows * d_model * _dtype_bytes(config.extract.storage_dtype)
  tokens = 2 * n_windows * T * 4  # token_ids and doc_ids, int32
  return {
    "n_windows": n_windows,
    "n_rows": n_rows,
    "chunk_rows": chunk_rows,
    "bytes_per_layer": per_layer,
    "bytes_activations": per_layer * n_layers,
    "bytes_tokens": tokens,
    "bytes_total": per_layer * n_layers + tokens,
  }


def extract_peak(
  a: Arch, n_layers: int, batch: int, seq_len: int, storage_dtype: str, compute_dtype: str = "float32"
) -> int:
  """Peak device bytes of one extraction batch: params, the [L,B,T,D] residual stack, its stored copy,
  and the largest block temporaries (q/k/v, attention scores and probabilities, the MLP hidden)."""
  n, c = batch * seq_len, _dtype_bytes(compute_dtype)
  params = model_param_count(a) * 4
  stack = n_layers * n * a.d_model * 4
  stored = n_layers * n * a.d_model * _dtype_bytes(storage_dtype)
  width = max(a.d_model, a.n_heads * a.hd)  # Gemma 3's heads are wider than d_model / heads
  block = (4 * n * width + batch * a.n_heads * seq_len * seq_len + 2 * n * a.d_ff) * c
  return params + stack + stored + block + 2 * n * 4


def train_state_bytes(d_model: int, width: int) -> int:
  """One layer's train state: parameters + Adam's two moments (float32) + int32 dead-latent counters."""
  return 3 * sae_param_count(d_model, width) * 4 + width * 4


def train_peak(d_model: int, width: int, layers_per_device: int, batch: int) -> int:
  """Peak device bytes of one SAE step. Per layer: the donated train state plus about three more
  parameter-sized buffers (gradient, Adam update, the renormalised decoder) -- XLA's buffer assignment
  of the trainer's step holds ~6x the parameters -- and per token the float32 pre-activations, codes,
  their gradients and the STE mask (5 x M), input, reconstruction, error and gradients (5 x D), and the
  bfloat16 input batch."""
  per_layer = (
    6 * sae_param_count(d_model, width) * 4
    + width * 4
    + batch * (5 * width + 5 * d_model) * 4
    + batch * d_model * 2
  )
  return layers_per_device * per_layer


def generate_peak(a: Arch, batch: int, prompt: int, new: int) -> int:
  """Greedy generation with a KV cache: params, the cache, prefill activations and prefill logits."""
  T = prompt + new
  cache = 2 * a.n_layers * batch * T * a.n_kv_heads * a.hd * 4
  prefill = (
    5 * batch * prompt * a.d_model + 2 * batch * a.n_heads * prompt * T + 2 * batch * prompt * a.d_ff
  ) * 4
  logits = batch * prompt * a.vocab * 4
  return model_param_count(a) * 4 + cache + prefill + logits


def track_peak(a: Arch, n_layers: int, width: int, batch: int, seq_len: int) -> int:
  """Teacher-forced tracking batch: params, logits, the residual stack, every layer's SAE and codes."""
  n = batch * seq_len
  fwd = extract_peak(a, n_layers, batch, seq_len, "float32") - n_layers * n * a.d_model * 4
  saes = n_layers * sae_param_count(a.d_model, width) * 4
  codes = 2 * n_layers * n * width * 4  # pre-activations and codes of every layer
  return fwd + n * a.vocab * 4 + saes + codes


def _largest_fitting(peak_fn, batch: int, limit: float) -> int | None:
  """The configured batch halved until `peak_fn(batch)` fits `limit`; None when even 1 does not fit."""
  while batch >= 1:
    if peak_fn(batch) <= limit:
      return batch
    batch //= 2
  return None


# ---- measured throughput --------------------------------------------------------------------------


def _timed(fn, *args, repeats: int = 3) -> float:
  """Best-of-`repeats` seconds of an already-compiled call (the first call compiles and is not timed)."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def measure_block_seconds(a: Arch, batch: int, seq_len: int) -> float:
  """Seconds of one proxy transformer block (attention + MLP at the model's shapes) on this device."""

  D, F, H, hd = a.d_model, a.d_ff, a.n_heads, a.hd
  key = jax.random.PRNGKey(0)
  w = {
    n: jax.random.normal(k, s) * 0.02
    for (n, s), k in zip(
      {"qkv": (D, 3 * H * hd), "o": (H * hd, D), "up": (D, F), "down": (F, D)}.items(),
      jax.random.split(key, 4),
    )
  }
  x = jax.random.normal(key, (batch, seq_len, D))

  @jax.jit
  def block(w, x):
    q, k, v = jnp.split(x @ w["qkv"], 3, axis=-1)
    heads = lambda t: t.reshape(batch, seq_len, H, hd)  # noqa: E731
    s = jnp.einsum("bqhd,bkhd->bhqk", heads(q), heads(k)) / math.sqrt(hd)
    s = jnp.where(jnp.tril(jnp.ones((seq_len, seq_len), bool)), s, -1e9)
    att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), heads(v)).reshape(batch, seq_len, H * hd)
    x = x + att @ w["o"]
    return x + jax.nn.gelu(x @ w["up"]) @ w["down"]

  return _timed(block, w, x)


def measure_sae_step_seconds(d_model: int, width: int, batch: int) -> float:
  """Seconds of one proxy SAE step (JumpReLU-style forward, backward and Adam) for ONE layer."""

  key = jax.random.PRNGKey(0)
  p = {
    "W_enc": jax.random.normal(key, (d_model, width)) * 0.01,
    "b_enc": jnp.zeros(width),
    "W_dec": jax.random.normal(key, (width, d_model)) * 0.01,
    "b_dec": jnp.zeros(d_model),
    "threshold": jnp.full(width, 1e-3),
  }
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
  x = jax.random.normal(key, (batch, d_model))

  def loss(p, x):
    pre = x @ p["W_enc"] + p["b_enc"]
    codes = jnp.where(pre > p["threshold"], pre, 0.0)
    err = codes @ p["W_dec"] + p["b_dec"] - x
    return jnp.mean(jnp.sum(err * err, -1)) + 1e-3 * jnp.mean(jnp.sum(jax.nn.sigmoid(pre), -1))

  @jax.jit
  def step(p, s, x):
    g = jax.grad(loss)(p, x)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  return _timed(step, p, opt.init(p), x)


# ---- devices the planner knows without measuring ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
  """Published figures of an accelerator, for estimates made away from it (a login node): a roofline
  of each step, max(FLOPs / flops, bytes / hbm) plus a launch overhead. Not measured."""

  kind: str
  platform: str  # jax Device.platform of such a device
  memory_gib: float
  flops: float  # effective float32 (TF32) matmul FLOP/s of a large, well-shaped step
  hbm: float  # memory bandwidth, bytes/s
  step_overhead_s: float  # launch and dispatch per step (the loop does no host round trip)


# A100: 156 TFLOP/s TF32 peak, ~113 effective (the 300k rows/s at batch 4096 of issue 11); H100 SXM: 495
# TF32 peak, ~300 effective (an assumption, not measured).
PROFILES = {
  "a100-40gb": DeviceProfile("A100 40GB", "gpu", 40.0, 113e12, 1.555e12, 50e-6),
  "a100-80gb": DeviceProfile("A100 80GB", "gpu", 80.0, 113e12, 2.039e12, 50e-6),
  "h100-80gb": DeviceProfile("H100 80GB", "gpu", 80.0, 300e12, 3.35e12, 40e-6),
}
PROFILES["a100"] = PROFILES["a100-80gb"]


def sae_step_roofline(profile: DeviceProfile, d_model: int, width: int, layers_per_device: int, batch: int):
  """(seconds, FLOPs, bytes) of one dense SAE step on `profile`: 12*D*M FLOPs per token and layer;
  about 10 passes over the parameters (forward, backward, gradients, two Adam moments, update,
  renormalisation) and two over the per-token buffers (5*M + 5*D float32)."""
  flops = layers_per_device * batch * 12 * d_model * width
  traffic = layers_per_device * (
    10 * sae_param_count(d_model, width) * 4 + 2 * batch * (5 * width + 5 * d_model) * 4
  )
  seconds = max(flops / profile.flops, traffic / profile.hbm) + profile.step_overhead_s
  return seconds, flops, traffic


def forward_flops(a: Arch, batch: int, seq_len: int) -> float:
  """One forward pass of the LM over `batch` sequences (matmuls and attention scores)."""
  n = batch * seq_len
  dense = 2 * (model_param_count(a) - a.vocab * a.d_model - a.n_positions * a.d_model * (a.family == "gpt2"))
  return dense * n + 4 * a.n_layers * batch * seq_len * seq_len * a.n_heads * a.hd


def compiled_train_peak(config, d_model: int, layers_per_device: int, platform: str) -> int | None:
  """Device bytes of the trainer's real per-device step program (the path `backward` picks on
  `platform`), from XLA's buffer assignment; None when this machine cannot compile for `platform`."""
  if jax.local_devices()[0].platform != platform:
    return None
  t = config.sae_training
  arch = train_step.for_platform(registry.from_config(config, d_model), t.backward, platform)
  settings = train_step.Settings(1e-4, 10, 0.0, 100, 100, 1, 1.0, int(t.batch_size))
  tx = train_step.make_optimizer(arch, settings)
  keys = jax.ShapeDtypeStruct((layers_per_device, 2), jnp.uint32)
  state = jax.eval_shape(jax.vmap(lambda k: train_step.init_state(k, arch, tx, 1.0)), keys)
  x = jax.ShapeDtypeStruct((layers_per_device, int(t.batch_size), d_model), jnp.bfloat16)
  aux = "on"  # the larger of the two variants the trainer runs
  step = jax.jit(train_step.make_block_step(arch, settings, tx, aux=aux), donate_argnums=0)
  m = step.lower(state, x).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def sparse_xla_extra(arch: common.Architecture, layers_per_device: int, batch: int) -> int:
  """Extra bytes of the sparse path's pure-XLA ops (what GPUs get): gathers of [N, D] float32 for the
  N = batch * capacity COO entries (and batch * k_aux for AuxK), about 3 such buffers each; fitted
  to XLA's buffer assignment of the GPT-2-medium step (36.9 GiB JumpReLU, 193 GiB TopK at batch 4096)."""
  n = batch * (arch.sparse_capacity + arch.aux_k_entries)
  return layers_per_device * 3 * n * arch.d_model * 4


# ---- the plan -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
  """Every figure of a plan (bytes, seconds, counts) plus warnings and proposals."""

  config_name: str
  arch: Arch
  figures: dict
  warnings: list
  proposals: dict  # config field -> proposed value


def _device_facts(
  n_devices: int | None, device_memory_gib: float | None, config, profile: DeviceProfile | None = None
) -> tuple[int, float, str]:
  dev = jax.local_devices()[0]
  n = n_devices or config.sae_training.devices or jax.device_count()
  if device_memory_gib:
    return n, device_memory_gib * GiB, "given"
  if profile is not None:
    return n, profile.memory_gib * GiB, profile.kind
  stats = dev.memory_stats() or {}
  if "bytes_limit" in stats:
    return n, float(stats["bytes_limit"]), f"{dev.device_kind} bytes_limit"
  available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return n, available / jax.local_device_count(), "host RAM available / CPU devices"


def _free_disk(workdir: str) -> int:
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def make_plan(
  config,
  workdir: str,
  stages=None,
  n_devices: int | None = None,
  device_memory_gib: float | None = None,
  measure: bool = True,
  device_kind: str | None = None,
  io_gbps: float | None = None,
) -> Plan:
  """Computes the plan for `config` (see the module docstring); starts nothing, writes nothing.

  device_kind: a key of PROFILES (the target's accelerator): times come from its roofline instead of
  measurements here. io_gbps: the node's store read/write bandwidth in GB/s (default 0.5).
  """
  stages = list(stages or config_lib.STAGES)
  a = architecture(config.model)
  layers = list(config.model.layers) or list(range(a.n_layers))
  L, D, M = len(layers), a.d_model, config.sae.width
  if device_kind is not None and device_kind not in PROFILES:
    raise ConfigError(f"--plan_device_kind={device_kind!r}: use one of {sorted(PROFILES)}")
  profile = PROFILES.get(device_kind) if device_kind else None
  platform = profile.platform if profile else jax.local_devices()[0].platform
  io_rate = (io_gbps or _IO_BYTES_PER_S / 1e9) * 1e9
  backward = train_step.backward_path(config.sae_training.backward, platform)
  arch = train_step.for_platform(registry.from_config(config, D), config.sae_training.backward, platform)
  n_dev, dev_mem, mem_source = _device_facts(n_devices, device_memory_gib, config, profile)
  n_dev = max(1, min(n_dev, L))  # the trainer never uses more devices than layers
  lpd = math.ceil(L / n_dev)
  store = store_geometry(config, L, D)
  t = config.sae_training
  n_eval_windows = max(1, int(round(t.eval_fraction * store["n_windows"])))  # as the train stage holds out
  train_rows = (store["n_windows"] - n_eval_windows) * (config.data.seq_len - 1)
  if t.tokens_per_layer:
    train_rows = min(train_rows, t.tokens_per_layer)
  steps = t.epochs * (train_rows // t.batch_size)
  answer_len = _PROMPT_TOKENS + config.qa.max_new_tokens
  n_questions = config.qa.n_questions or 3610

  compiled = compiled_train_peak(config, D, lpd, platform) if measure else None

  def train_fn(b):
    if b == t.batch_size and compiled is not None:
      return compiled
    extra = sparse_xla_extra(arch, lpd, b) if arch.sparse_capacity and platform != "cpu" else 0
    return train_peak(D, M, lpd, b) + extra

  peaks = {
    "extract": (
      lambda b: extract_peak(a, L, b, config.data.seq_len, config.extract.storage_dtype, config.model.dtype),
      "extract.batch_size",
      config.extract.batch_size,
    ),
    "train": (train_fn, "sae_training.batch_size", t.batch_size),
    "answer": (
      lambda b: generate_peak(a, b, _PROMPT_TOKENS, config.qa.max_new_tokens),
      "qa.batch_size",
      config.qa.batch_size,
    ),
    "track": (
      lambda b: track_peak(a, L, M, b, answer_len),
      "tracking.batch_size",
      config.tracking.batch_size,
    ),
  }
  warnings, proposals, peak_bytes = [], {}, {}
  for stage, (fn, field, batch) in peaks.items():
    peak_bytes[stage] = fn(batch)
    if stage in stages and peak_bytes[stage] > _FIT * dev_mem:
      fit = _largest_fitting(fn, batch, _FIT * dev_mem)
      if fit:
        proposals[field] = fit
        warnings.append(
          f"{stage}: peak {_h(peak_bytes[stage])} per device exceeds {_FIT:.0%} of "
          f"{_h(dev_mem)}: set --config.{field}={fit} (peak {_h(fn(fit))})"
        )
      elif stage == "train":
        need = math.ceil(L / max(1, int(_FIT * dev_mem // max(1, train_peak(D, M, 1, 1)))))
        warnings.append(
          f"train: even 1 token per step does not fit {lpd} layers on a device of "
          f"{_h(dev_mem)}: spread the layers over at least {need} devices"
        )
      else:
        warnings.append(f"{stage}: even batch 1 needs {_h(fn(1))} per device, more than {_h(dev_mem)}")
  if config.data.seq_len > a.n_positions:
    warnings.append(f"data.seq_len={config.data.seq_len} exceeds the model's {a.n_positions} positions")
  if L % n_dev:
    warnings.append(
      f"{L} layers over {n_dev} devices: {lpd} per device, {lpd * n_dev - L} device slots idle (padding)"
    )

  ckpt = _CKPT_KEPT * L * train_state_bytes(D, M)
  export = L * sae_param_count(D, M) * 4
  features = n_questions * L * (M * 2 + D * 4) * 2  # sae_pooled (float16) and raw_resid, + ablations
  disk = {
    "store": store["bytes_total"] if "extract" in stages else 0,
    "checkpoints": ckpt if "train" in stages else 0,
    "export": export if "train" in stages else 0,
    "features": features if "track" in stages else 0,
  }
  free = _free_disk(workdir)
  if sum(disk.values()) > free:
    tokens_fit = int(
      config.data.n_tokens * max(0, free - sum(disk.values()) + disk["store"]) / max(1, disk["store"]) * _FIT
    )
    warnings.append(
      f"disk: the run writes {_h(sum(disk.values()))} but {_h(free)} is free under "
      f"{workdir}: free space, use another --workdir, or set --config.data.n_tokens="
      f"{tokens_fit}"
    )
    proposals["data.n_tokens"] = tokens_fit

  times, train_detail = {}, {}
  if profile is not None:
    n_batches = math.ceil(store["n_windows"] / config.extract.batch_size)
    fwd_s = forward_flops(a, config.extract.batch_size, config.data.seq_len) / profile.flops
    write_s = L * config.extract.batch_size * (config.data.seq_len - 1) * D * 2 / (io_rate / n_dev)
    # every process extracts its own chunk groups; the node's store bandwidth is shared
    times["extract"] = _STARTUP_S["extract"] + n_batches / n_dev * max(fwd_s, write_s)
    step_s, flops, traffic = sae_step_roofline(profile, D, M, lpd, t.batch_size)
    read_s = n_dev * lpd * t.batch_size * D * 2 / io_rate  # every process reads its layers per step
    times["train"] = _STARTUP_S["train"] + steps * max(step_s, read_s)
    train_detail = {
      "step_seconds": step_s,
      "compute_seconds": steps * step_s,
      "read_seconds": steps * read_s,
      "rows_per_second_per_device": t.batch_size / step_s,
      "read_bytes_per_second_per_device": lpd * t.batch_size * D * 2 / step_s,
      "bound": "compute" if flops / profile.flops >= traffic / profile.hbm else "memory bandwidth",
      "io_bound": read_s > step_s,
    }
    n_qbatches = math.ceil(n_questions / config.qa.batch_size)
    decode_s = model_param_count(a) * 4 / profile.hbm + profile.step_overhead_s
    prefill = forward_flops(a, config.qa.batch_size, _PROMPT_TOKENS) / profile.flops
    times["answer"] = _STARTUP_S["answer"] + n_qbatches * (prefill + config.qa.max_new_tokens * decode_s)
    track_s = forward_flops(a, config.tracking.batch_size, answer_len) / profile.flops
    times["track"] = _STARTUP_S["track"] + math.ceil(n_questions / config.tracking.batch_size) * track_s
    times = {k: v for k, v in times.items() if k in stages}
  elif measure:
    meas_b = min(config.extract.batch_size, 2)
    block_s = measure_block_seconds(a, meas_b, config.data.seq_len) * config.extract.batch_size / meas_b
    n_batches = math.ceil(store["n_windows"] / config.extract.batch_size)
    batch_io = L * config.extract.batch_size * (config.data.seq_len - 1) * D * 2 / _IO_BYTES_PER_S
    times["extract"] = _STARTUP_S["extract"] + n_batches * (a.n_layers * block_s + batch_io)
    step_s = measure_sae_step_seconds(D, M, t.batch_size) * lpd
    times["train"] = _STARTUP_S["train"] + steps * (step_s + lpd * t.batch_size * D * 2 / _IO_BYTES_PER_S)
    gen_block_s = measure_block_seconds(a, 1, 1)  # one decode step of one layer, per batch
    prefill_s = measure_block_seconds(a, 1, _PROMPT_TOKENS) * config.qa.batch_size
    n_qbatches = math.ceil(n_questions / config.qa.batch_size)
    times["answer"] = _STARTUP_S["answer"] + n_qbatches * a.n_layers * (
      prefill_s + config.qa.max_new_tokens * gen_block_s * config.qa.batch_size
    )
    track_s = measure_block_seconds(a, 1, answer_len) * config.tracking.batch_size * a.n_layers
    times["track"] = _STARTUP_S["track"] + math.ceil(n_questions / config.tracking.batch_size) * track_s
    times = {k: v for k, v in times.items() if k in stages}

  figures = {
    "layers": L,
    "d_model": D,
    "d_sae": M,
    "devices": n_dev,
    "layers_per_device": lpd,
    "device_memory": dev_mem,
    "device_memory_source": mem_source,
    "model_params": model_param_count(a),
    "model_param_bytes": model_param_count(a) * 4,
    "sae_params_per_layer": sae_param_count(D, M),
    "sae_param_bytes_per_layer": sae_param_count(D, M) * 4,
    "sae_param_bytes_total": export,
    "train_state_bytes_per_layer": train_state_bytes(D, M),
    "store": store,
    "train_rows_per_layer": train_rows,
    "train_steps": steps,
    "peak_device_bytes": peak_bytes,
    # two shuffle buffers (one read while the other is cut) of the chunk-sized windows
    "host_shuffle_buffer_bytes": 2 * t.shuffle_windows * store["chunk_rows"] * lpd * D * 2,
    "platform": platform,
    "backward": backward,
    "train_peak_source": "XLA buffer assignment of the step" if compiled is not None else "analytic",
    "time_source": f"{profile.kind} roofline (not measured)" if profile else "measured on this machine",
    "train_detail": train_detail,
    "disk_bytes": disk,
    "disk_free": free,
    "seconds": times,
  }
  return Plan(config.model.name, a, figures, warnings, proposals)


def _h(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return ""


def _hs(s: float) -> str:
  return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def format_plan(plan: Plan) -> str:
  """The plan as the text `--plan` prints."""
  f, a, st = plan.figures, plan.arch, plan.figures["store"]
  lines = [
    f"Plan for {plan.config_name}: {a.family}, {f['layers']} layers, d_model {f['d_model']}, "
    f"SAE width {f['d_sae']}",
    f"  devices: {f['devices']} x {_h(f['device_memory'])} ({f['device_memory_source']}, platform "
    f"{f['platform']}); {f['layers_per_device']} layer(s) per device; SAE backward {f['backward']}",
    "Memory",
    f"  model parameters      {f['model_params']:,} = {_h(f['model_param_bytes'])} (float32)",
    f"  SAE parameters        {f['sae_params_per_layer']:,} per layer = "
    f"{_h(f['sae_param_bytes_per_layer'])}; all layers {_h(f['sae_param_bytes_total'])}",
    f"  SAE train state       {_h(f['train_state_bytes_per_layer'])} per layer (params + Adam)",
    f"  host shuffle buffers  {_h(f['host_shuffle_buffer_bytes'])} per process (two: one is read "
    "while the other is cut)",
    "Activation store",
    f"  {st['n_rows']:,} rows x {f['layers']} layers: {_h(st['bytes_per_layer'])} per layer, "
    f"{_h(st['bytes_total'])} in total (with token ids)",
    "Peak device memory per device",
  ]
  for stage, b in f["peak_device_bytes"].items():
    note = f"; {f['train_peak_source']}" if stage == "train" else ""
    lines.append(f"  {stage:<9} {_h(b):>12}  ({b / f['device_memory']:.0%} of a device{note})")
  lines.append(
    f"Disk: {_h(sum(f['disk_bytes'].values()))} to write "
    f"({', '.join(f'{k} {_h(v)}' for k, v in f['disk_bytes'].items() if v)}); "
    f"{_h(f['disk_free'])} free"
  )
  if f["seconds"]:
    source = (
      "measured throughput on this machine" if f["time_source"].startswith("measured") else f["time_source"]
    )
    lines.append(f"Time ({source}; SAE training {f['train_steps']:,} steps)")
    for stage, s in f["seconds"].items():
      lines.append(f"  {stage:<9} ~{_hs(s)}")
    d = f["train_detail"]
    if d:
      lines.append(
        f"  SAE step {d['step_seconds'] * 1e3:.2f} ms ({d['bound']} bound): one device consumes "
        f"{d['rows_per_second_per_device']:,.0f} rows/s = {d['read_bytes_per_second_per_device'] / 1e9:.2f} GB/s "
        f"of store reads; compute {_hs(d['compute_seconds'])}, store reads {_hs(d['read_seconds'])}"
        + (" (the store's bandwidth binds: --plan_io_gbps)" if d["io_bound"] else "")
      )
    lines.append(f"  total     ~{_hs(sum(f['seconds'].values()))} (detect/evaluate/report not estimated)")
  lines += [f"WARNING: {w}" for w in plan.warnings]
  if plan.proposals:
    lines.append("Proposed: " + " ".join(f"--config.{k}={v}" for k, v in plan.proposals.items()))
  else:
    lines.append("Everything fits.")
  return "\n".join(lines)


def compare_presets(configs: dict, workdir: str, **kwargs) -> str:
  """A table of the plans of a config file's presets ({argument: config}) and which one to pick: the
  fastest whose every stage fits (times need measurements or a device profile)."""
  rows, best = [], None
  for arg, config in configs.items():
    plan = make_plan(config, workdir, **kwargs)
    f = plan.figures
    fits = not any(k in plan.proposals for k in ("sae_training.batch_size", "extract.batch_size"))
    total = sum(f["seconds"].values()) if f["seconds"] else None
    # equal totals (both bound by the store's bandwidth): the one that computes less
    key = (total, f["train_detail"].get("compute_seconds", 0.0)) if total is not None else None
    rows.append(
      f"  {arg or '(none)':<8} SAE batch {config.sae_training.batch_size:>5}  {f['train_steps']:>10,} steps"
      f"  train peak {_h(f['peak_device_bytes']['train']):>10}"
      f"  train ~{_hs(f['seconds']['train']) if 'train' in f['seconds'] else '?':>8}"
      f"  total ~{_hs(total) if total else '?':>8}  {'fits' if fits else 'does not fit'}"
    )
    if fits and key is not None and (best is None or key < best[1]):
      best = (arg, key)
  lines = ["Presets of this config file (same overrides):"] + rows
  if best is None:
    lines.append("Pick: no estimate (pass --plan_device_kind, or run --plan on the target node)")
  else:
    lines.append(f"Pick: {'the preset ' + repr(best[0]) if best[0] else 'no preset'} (fastest that fits)")
  return "\n".join(lines)
