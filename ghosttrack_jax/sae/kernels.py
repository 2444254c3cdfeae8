"""Builds and registers the C++ sparse kernels (kernels.cc) as XLA FFI targets, and dispatches to them.

`dispatch(name, xla_fn, *args)` lowers to the C++ kernel on CPU and to `xla_fn` elsewhere (GPU/TPU:
XLA's own gathers and segment sums are fast there), chosen per platform at lowering time with
`lax.platform_dependent`. The library is compiled once per source/CPU into
`$GHOSTTRACK_KERNEL_CACHE` (default `~/.cache/ghosttrack_jax/kernels`); without a C++ compiler the XLA
implementation is used everywhere and a warning says so.

Under vmap a kernel is called once with every item (vmap_method="expand_dims"; kernels.cc handles the
leading dimensions), so the trainer's stacked layers cost one call, not a loop of slice copies.

`GHOSTTRACK_SPARSE_KERNELS=xla` forces the XLA implementation (tests compare both).
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cc")
_TARGETS = {
  "compact": "GtCompact",
  "topk": "GtTopK",
  "topk_bias": "GtTopKBias",
  "kth_largest": "GtKthLargest",
  "spmm_rows": "GtSpmmRows",
  "sddmm": "GtSddmm",
  "spmm_t": "GtSpmmT",
  "spmm_tt": "GtSpmmTT",
  "col_sum": "GtColSum",
}
_LOCK = threading.Lock()
_STATE = {"tried": False, "ok": False, "reason": "", "path": ""}


def _cpu_signature() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    flags = ""
  return platform.machine() + flags


def _build() -> str:
  with open(_SOURCE, "rb") as f:
    source = f.read()
  include = jax.ffi.include_dir()
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fopenmp-simd"]
  key = hashlib.sha256(
    source + " ".join(flags).encode() + _cpu_signature().encode() + jax.__version__.encode()
  ).hexdigest()[:16]
  cache = os.environ.get(
    "GHOSTTRACK_KERNEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ghosttrack_jax", "kernels")
  )
  os.makedirs(cache, exist_ok=True)
  path = os.path.join(cache, f"gt_sparse_{key}.so")
  if os.path.exists(path):
    return path
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError("no C++ compiler (g++/c++) on PATH")
  fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so")
  os.close(fd)
  try:
    subprocess.run(
      [compiler, *flags, f"-I{include}", _SOURCE, "-o", tmp],
      check=True,
      capture_output=True,
      text=True,
      timeout=300,
    )
    os.replace(tmp, path)  # atomic: concurrent builders race harmlessly
  except subprocess.CalledProcessError as e:
    raise RuntimeError(f"compiling {_SOURCE} failed: {e.stderr[-2000:]}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def available() -> bool:
  """True when the C++ kernels are built and registered (compiles them on the first call)."""
  if os.environ.get("GHOSTTRACK_SPARSE_KERNELS", "auto").lower() == "xla":
    return False
  with _LOCK:
    if not _STATE["tried"]:
      _STATE["tried"] = True
      try:
        path = _build()
        lib = ctypes.CDLL(path)
        for target in _TARGETS.values():
          jax.ffi.register_ffi_target(
            f"ghosttrack_{target}", jax.ffi.pycapsule(getattr(lib, target)), platform="cpu"
          )
        _STATE.update(ok=True, path=path, lib=lib)
      except Exception as e:  # pylint: disable=broad-except
        _STATE.update(ok=False, reason=str(e))
        logging.warning(
          "sparse C++ kernels unavailable (%s); using the XLA implementation, which is slower on CPU", e
        )
    return _STATE["ok"]


def _ffi_fn(name: str, **static):
  """The FFI call for `name`; output shapes follow from the inputs and `static`."""
  target = f"ghosttrack_{_TARGETS[name]}"

  def call(*args):
    if name == "compact":
      cap = static["capacity"]
      out = (
        jax.ShapeDtypeStruct((cap,), jnp.int32),
        jax.ShapeDtypeStruct((cap,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
      )
    elif name in ("topk", "topk_bias"):
      n = args[0].shape[0] * static["k"]
      out = (jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n,), jnp.int32))
    elif name == "kth_largest":
      out = jax.ShapeDtypeStruct((), jnp.int32)
    elif name == "spmm_rows":
      w = args[4]
      out = jax.ShapeDtypeStruct((static["n_rows"], w.shape[1]), jnp.float32)
    elif name == "sddmm":
      out = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    elif name == "spmm_t":
      a = args[4]
      out = jax.ShapeDtypeStruct((static["n_cols"], a.shape[1]), jnp.float32)
    elif name == "spmm_tt":
      a = args[4]
      out = jax.ShapeDtypeStruct((a.shape[1], static["n_cols"]), jnp.float32)
    elif name == "col_sum":
      out = jax.ShapeDtypeStruct((static["n_cols"],), jnp.float32)
    else:
      raise KeyError(name)
    args = [
      jnp.asarray(a, jnp.float32)
      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
      else jnp.asarray(a, jnp.int32)
      for a in args
    ]
    # expand_dims: a vmapped call is one kernel call over every item (kernels.cc, "vmapped calls").
    return jax.ffi.ffi_call(target, out, vmap_method="expand_dims")(*args)

  return call


def dispatch(name: str, xla_fn, *args, **static):
  """Calls the C++ kernel `name` on CPU (when built) and `xla_fn(*args)` on other platforms."""
  if not available():
    return xla_fn(*args)
  return jax.lax.platform_dependent(*args, cpu=_ffi_fn(name, **static), default=xla_fn)


def backend() -> str:
  """'ffi' when the C++ kernels serve CPU computations, else 'xla'."""
  return "ffi" if available() else "xla"


def numpy_reference_compact(pre: np.ndarray, thr: np.ndarray, capacity: int):
  """Plain numpy version of `compact`, for tests: (rows, cols, kept, total)."""
  b, i = np.nonzero(pre > thr[None, :])
  n = min(len(b), capacity)
  rows = np.zeros(capacity, np.int32)
  cols = np.zeros(capacity, np.int32)
  rows[:n], cols[:n] = b[:n], i[:n]
  return rows, cols, n, len(b)
