"""On-disk activation store: every layer's residual stream for the same tokens, in TensorStore zarr3.

Layout of a store directory (see docs/DESIGN.md):

  activations/    zarr3 [layer, row, d_model], bfloat16 or float16, chunks [1, chunk_rows, d_model],
                  raw little-endian bytes: one file per chunk, activations/c/<layer>/<chunk>/0
  token_ids/      zarr3 int32 [window, seq_len]: the packed token windows the rows come from
  doc_ids/        zarr3 int32 [window, seq_len]: which corpus document each token belongs to
  checksums.npy   uint32 [layer, chunk]: CRC-32 of every activation chunk file (format 2)
  meta.json       model, source fingerprint, layers, d_model, dtype, shapes, token rule, per-layer norm
                  statistics, the SHA-256 of checksums.npy and the CRC-32 of every token chunk file
  progress.json   extraction phase and batch geometry (only while incomplete)
  groups/         one JSON per finished chunk group: its checksums and statistics (only while incomplete)
  COMPLETE        written last; a store without it is never opened for reading

Row r of `activations` is window r // (seq_len - 1), position 1 + r % (seq_len - 1): position 0 of every
window is not stored (its residual norm is an outlier, the attention sink).

Chunks are one layer tall so that a layer's rows are read without touching other layers, and a trainer
reads contiguous row windows (fast) and shuffles them in RAM (random row gathers are ~30x slower).

Reads of activations go straight to the chunk files (`read_into`: one copy, page cache -> caller's
array, no TensorStore result array) and check each chunk's size and CRC-32 (zlib, ~2.4 GB per
CPU-second, in the reader's thread); a damaged chunk raises DamagedStoreError naming the store, the chunk
and the fix. `verify_store` checks every chunk and token file without reading the store into memory.
"""

import dataclasses
import logging
import os
import threading
import zlib
from typing import Sequence

import ml_dtypes
import numpy as np
import tensorstore as ts

from ghosttrack_jax.errors import DamagedStoreError, IncompleteStoreError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io

COMPLETE = "COMPLETE"
META = "meta.json"
PROGRESS = "progress.json"
CHECKSUMS = "checksums.npy"
GROUPS = "groups"
FORMAT = 2  # meta["format"]: 2 = per-chunk checksums; a store without the field has none
TOKEN_RULE = "packed windows; position 0 of each window excluded; no padding"
TOKEN_ARRAYS = ("token_ids", "doc_ids")

# Fields compared when a caller states what it expects the store to hold.
CHECKED_FIELDS = ("model", "d_model", "layers", "dtype", "seq_len")
NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_FIX = (
  "Rerun the same command with --verify to list every damaged file, then delete {path} and run the "
  "extract stage again (or restore the store from a copy)."
)


def token_rule(window_bos: bool) -> str:
  """The packing rule a store records (extract.corpus): TOKEN_RULE, and BOS first where the model wants it."""
  return TOKEN_RULE + ("; each window starts with BOS" if window_bos else "")


def _spec(
  path: str, shape: Sequence[int] | None, dtype: str, chunks: Sequence[int] | None, create: bool
) -> dict:
  spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
  if create:
    spec["metadata"] = {
      "shape": list(shape),
      "data_type": dtype,
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
      # Raw bytes: residuals barely compress (~8%) and compression slows reads several-fold.
      "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }
    spec["create"] = True
    spec["delete_existing"] = True
  return spec


def create_array(path: str, shape: Sequence[int], dtype: str, chunks: Sequence[int]) -> ts.TensorStore:
  """Creates (or re-creates, deleting what is there) a zarr3 array. With several processes only one may
  call this, before the others open it (a re-create wipes chunks that others have written)."""
  return ts.open(_spec(path, shape, dtype, chunks, create=True)).result()


def open_array(path: str, read_only: bool = True) -> ts.TensorStore:
  mode = {"open": True}
  if read_only:
    return ts.open(_spec(path, None, "", None, create=False), read=True, write=False, **mode).result()
  return ts.open(_spec(path, None, "", None, create=False), **mode).result()


def describe_mismatch(meta: dict, expect: dict, fields: Sequence[str] = CHECKED_FIELDS) -> list[str]:
  """Lists, field by field, where `meta` differs from `expect` (only fields present in `expect`)."""
  problems = []
  for key in fields:
    if key in expect and expect[key] is not None:
      want, have = expect[key], meta.get(key)
      if isinstance(want, (list, tuple)):
        want, have = list(want), list(have or [])
      if want != have:
        problems.append(f"{key}: store has {have!r}, config wants {want!r}")
  return problems


# ---- checksums ------------------------------------------------------------------------------------


def crc32(data: np.ndarray, pad_bytes: int = 0) -> int:
  """CRC-32 of an array's bytes followed by `pad_bytes` zero bytes (a partial last chunk is stored whole,
  padded with the fill value 0). zlib releases the GIL, so threads compute these in parallel."""
  crc = zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
  if pad_bytes:
    crc = zlib.crc32(bytes(pad_bytes), crc)
  return crc


def chunk_file(array_dir: str, *index: int) -> str:
  """The file of chunk `index` of a zarr3 array with the default "/" chunk key encoding."""
  return os.path.join(array_dir, "c", *(str(i) for i in index))


def file_crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      crc = zlib.crc32(block, crc)
  return crc


def token_checksums(path: str) -> dict:
  """{array: {chunk key: CRC-32 of its file}} of the token arrays (recorded in meta.json at the end)."""
  out = {}
  for name in TOKEN_ARRAYS:
    root = os.path.join(path, name, "c")
    files = {}
    for d, _, names in os.walk(root):
      for n in names:
        full = os.path.join(d, n)
        files[os.path.relpath(full, os.path.join(path, name))] = file_crc32(full)
    out[name] = dict(sorted(files.items()))
  return out


def write_checksums(path: str, crcs: np.ndarray) -> str:
  """Writes checksums.npy atomically; returns its SHA-256 (meta.json records it)."""
  target = os.path.join(path, CHECKSUMS)
  with atomic_io.atomic_path(target) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(crcs, np.uint32))
  return atomic_io.file_sha256(target)


def _raw_layout(array_dir: str) -> dict | None:
  """The zarr.json of an activations array whose chunk files the raw reader understands (raw
  little-endian bytes, regular [1, C, D] chunks, default "/" keys), else None (TensorStore reads)."""
  try:
    meta = atomic_io.read_json(os.path.join(array_dir, "zarr.json"))
  except (OSError, ValueError):
    return None
  codecs = meta.get("codecs")
  grid = meta.get("chunk_grid", {})
  keys = meta.get("chunk_key_encoding", {"name": "default"})
  chunk = grid.get("configuration", {}).get("chunk_shape", [])
  ok = (
    codecs == [{"name": "bytes", "configuration": {"endian": "little"}}]
    and grid.get("name") == "regular"
    and len(chunk) == 3
    and chunk[0] == 1
    and keys.get("name") == "default"
    and keys.get("configuration", {}).get("separator", "/") == "/"
    and meta.get("data_type") in NP_DTYPES
    and meta.get("fill_value", 0) in (0, 0.0)
  )
  return meta if ok else None


# ---- the store ------------------------------------------------------------------------------------


@dataclasses.dataclass
class ActivationStore:
  """A complete store opened read-only."""

  path: str
  meta: dict
  activations: ts.TensorStore
  token_ids: ts.TensorStore
  doc_ids: ts.TensorStore
  checksums: np.ndarray | None = None  # uint32 [layer position, chunk]; None for stores without them
  verify_reads: bool = True  # check every chunk's CRC-32 on read (size checks always run)

  def __post_init__(self):
    self._acts_dir = os.path.join(self.path, "activations")
    self._raw = _raw_layout(self._acts_dir)
    self._local = threading.local()
    self._token_chunks_ok: set = set()  # (array, chunk file) whose CRC-32 was checked in this process
    if self._raw is not None:
      self.chunk_rows = int(self._raw["chunk_grid"]["configuration"]["chunk_shape"][1])
      self.dtype = np.dtype(NP_DTYPES[self._raw["data_type"]])
    else:
      self.chunk_rows = int(self.activations.chunk_layout.read_chunk.shape[1])
      self.dtype = np.dtype(self.activations.dtype.numpy_dtype)

  @classmethod
  def open(cls, path: str, expect: dict | None = None, verify_reads: bool = True) -> "ActivationStore":
    """Opens a complete store; `expect` (model, d_model, layers, dtype, seq_len) is checked field by field."""
    if not os.path.exists(os.path.join(path, META)):
      raise IncompleteStoreError(
        f"no activation store at {path}: run the extract stage first (--stages=extract)"
      )
    if not os.path.exists(os.path.join(path, COMPLETE)):
      raise IncompleteStoreError(
        f"activation store {path} is incomplete (no {COMPLETE} marker): rerun the extract stage, "
        "which resumes where it stopped"
      )
    meta = atomic_io.read_json(os.path.join(path, META))
    if expect:
      problems = describe_mismatch(meta, expect)
      if problems:
        raise StoreMismatchError(
          f"activation store {path} was made for another configuration ({'; '.join(problems)}). "
          "Use another --workdir, or delete that folder to extract again."
        )
    try:
      arrays = {n: open_array(os.path.join(path, n)) for n in ("activations",) + TOKEN_ARRAYS}
    except ValueError as e:
      raise DamagedStoreError(
        f"activation store {path}: an array cannot be opened ({e}). " + _FIX.format(path=path)
      ) from e
    return cls(
      path=path, meta=meta, checksums=_load_checksums(path, meta), verify_reads=verify_reads, **arrays
    )

  @property
  def n_rows(self) -> int:
    return int(self.meta["n_rows"])

  @property
  def n_windows(self) -> int:
    return int(self.meta["n_windows"])

  @property
  def rows_per_window(self) -> int:
    return int(self.meta["seq_len"]) - 1

  @property
  def layers(self) -> list[int]:
    return list(self.meta["layers"])

  @property
  def d_model(self) -> int:
    return int(self.meta["d_model"])

  @property
  def n_chunks(self) -> int:
    return -(-self.n_rows // self.chunk_rows)

  def read(self, layer_indices: slice | Sequence[int] | int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the given layer positions (indices into `layers`), in storage dtype.

    Returns [n_layers_selected, stop - start, d_model] (or [rows, d_model] for an int index).
    """
    if not 0 <= start <= stop <= self.n_rows:
      raise IndexError(f"rows [{start}, {stop}) outside the store's {self.n_rows} rows")
    if isinstance(layer_indices, (int, np.integer)):
      out = np.empty((stop - start, self.d_model), self.dtype)
      self.read_into(int(layer_indices), start, stop, out)
      return out
    positions = list(
      range(len(self.layers))[layer_indices] if isinstance(layer_indices, slice) else layer_indices
    )
    out = np.empty((len(positions), stop - start, self.d_model), self.dtype)
    for i, position in enumerate(positions):
      self.read_into(int(position), start, stop, out[i])
    return out

  def read_into(self, position: int, start: int, stop: int, out: np.ndarray) -> None:
    """Fills `out` [stop - start, d_model] with rows [start, stop) of layer position `position`.

    Whole chunks are read straight into `out`; a partly covered chunk through a per-thread scratch
    chunk (its checksum covers the whole chunk). Thread-safe.
    """
    if not 0 <= start <= stop <= self.n_rows:
      raise IndexError(f"rows [{start}, {stop}) outside the store's {self.n_rows} rows")
    if self._raw is None:
      out[...] = self._ts_read(self.activations[position, start:stop], f"layer position {position}")
      return
    c_rows = self.chunk_rows
    for c in range(start // c_rows, -(-stop // c_rows)):
      a, b = max(start, c * c_rows), min(stop, (c + 1) * c_rows)
      dst = out[a - start : b - start]
      if a == c * c_rows and b == (c + 1) * c_rows and dst.flags.c_contiguous:
        self.read_chunk(position, c, dst)
      else:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
          scratch = self._local.scratch = np.empty((c_rows, self.d_model), self.dtype)
        self.read_chunk(position, c, scratch)
        dst[...] = scratch[a - c * c_rows : b - c * c_rows]

  def _damaged(self, position: int, chunk: int, what: str) -> DamagedStoreError:
    rows = (chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n_rows))
    return DamagedStoreError(
      f"activation store {self.path}: chunk {chunk} of layer position {position} (block "
      f"{self.layers[position]}, rows {rows[0]}..{rows[1]}; file "
      f"{chunk_file(self._acts_dir, position, chunk, 0)}) is damaged: {what}. " + _FIX.format(path=self.path)
    )

  def read_chunk(self, position: int, chunk: int, dst: np.ndarray) -> None:
    """Reads one whole stored chunk ([chunk_rows, D]) into `dst`, checking its size and checksum."""
    fname = chunk_file(self._acts_dir, position, chunk, 0)
    nbytes = dst.nbytes
    try:
      fd = os.open(fname, os.O_RDONLY)
    except FileNotFoundError:
      # zarr leaves out a chunk equal to the fill value; real activations never are, so a missing
      # chunk is damage unless its checksum says it was all zeros.
      dst[...] = 0
      if self.checksums is None or int(self.checksums[position, chunk]) != crc32(dst):
        raise self._damaged(position, chunk, "the file is missing") from None
      return
    try:
      size = os.fstat(fd).st_size
      if size != nbytes:
        raise self._damaged(position, chunk, f"the file has {size} bytes, a chunk has {nbytes}")
      got = os.preadv(fd, [memoryview(dst.view(np.uint8).reshape(-1))], 0)
      if got != nbytes:
        raise self._damaged(position, chunk, f"only {got} of {nbytes} bytes could be read")
    finally:
      os.close(fd)
    if self.verify_reads and self.checksums is not None:
      want = int(self.checksums[position, chunk])
      have = crc32(dst)
      if have != want:
        raise self._damaged(position, chunk, f"CRC-32 {have:08x}, recorded at extraction {want:08x}")

  def _ts_read(self, view, what: str) -> np.ndarray:
    try:
      return view.read().result()
    except ValueError as e:  # TensorStore's data errors ("Not enough data ...", decode failures)
      raise DamagedStoreError(
        f"activation store {self.path}: reading {what} failed ({e}). " + _FIX.format(path=self.path)
      ) from e

  def _check_token_chunks(self, name: str, start: int, stop: int) -> None:
    """The chunk files of token array `name` holding windows [start, stop) against the CRC-32 recorded in
    meta.json (once per file and process): a flipped byte in an int32 chunk would read as another token."""
    recorded = (self.meta.get("token_checksums") or {}).get(name)
    if not recorded or not self.verify_reads:
      return
    rows = int(getattr(self, name).chunk_layout.read_chunk.shape[0])
    for c in range(start // rows, -(-stop // rows)):
      key = os.path.join("c", str(c), "0")
      if (name, key) in self._token_chunks_ok or key not in recorded:
        continue
      full = os.path.join(self.path, name, key)
      if not os.path.exists(full) or file_crc32(full) != recorded[key]:
        raise DamagedStoreError(
          f"activation store {self.path}: {full} is damaged (its CRC-32 differs from the one in {META}). "
          + _FIX.format(path=self.path)
        )
      self._token_chunks_ok.add((name, key))

  def token_windows(self, start: int, stop: int) -> np.ndarray:
    """Token ids of windows [start, stop): [n, seq_len] int32."""
    self._check_token_chunks("token_ids", start, stop)
    return self._ts_read(self.token_ids[start:stop], f"token_ids windows {start}..{stop}")

  def document_ids(self, start: int, stop: int) -> np.ndarray:
    self._check_token_chunks("doc_ids", start, stop)
    return self._ts_read(self.doc_ids[start:stop], f"doc_ids windows {start}..{stop}")

  def mean_sq_norm(self) -> np.ndarray:
    """Per-layer E||x||^2 over all stored rows (for SAE input scaling)."""
    return np.asarray([s["mean_sq_norm"] for s in self.meta["layer_stats"]], dtype=np.float64)


def _load_checksums(path: str, meta: dict) -> np.ndarray | None:
  if int(meta.get("format", 1)) < 2:
    logging.warning(
      "activation store %s has no checksums (made before store format 2): reads check chunk sizes "
      "only; extract again to have every chunk checked",
      path,
    )
    return None
  target = os.path.join(path, CHECKSUMS)
  want = meta.get("checksums_sha256")
  if not os.path.exists(target) or atomic_io.file_sha256(target) != want:
    raise DamagedStoreError(
      f"activation store {path}: {CHECKSUMS} is missing or damaged (its SHA-256 differs from the one "
      f"in {META}). " + _FIX.format(path=path)
    )
  return np.load(target)


def verify_store(path: str) -> list[str]:
  """Every problem of a complete store, one line each: missing or damaged metadata, activation chunks
  (size, CRC-32) and token chunk files (CRC-32). Reads each chunk once; keeps one chunk in memory."""
  try:
    store = ActivationStore.open(path)
  except (IncompleteStoreError, DamagedStoreError, OSError, ValueError) as e:
    return [str(e)]
  problems = []
  if store.checksums is None:
    problems.append(f"activation store {path} has no checksums (store format 1): only sizes were checked")
  elif store.checksums.shape != (len(store.layers), store.n_chunks):
    return [
      f"activation store {path}: {CHECKSUMS} has shape {store.checksums.shape}, expected "
      f"{(len(store.layers), store.n_chunks)}. " + _FIX.format(path=path)
    ]
  scratch = np.empty((store.chunk_rows, store.d_model), store.dtype)
  for position in range(len(store.layers)):
    for chunk in range(store.n_chunks):
      try:
        store.read_chunk(position, chunk, scratch)
      except DamagedStoreError as e:
        problems.append(str(e))
  recorded = store.meta.get("token_checksums")
  if recorded is not None:
    have = token_checksums(path)
    for name, files in recorded.items():
      for key, crc in files.items():
        got = have.get(name, {}).get(key)
        if got != crc:
          what = "missing" if got is None else f"CRC-32 {got:08x}, recorded {crc:08x}"
          problems.append(
            f"activation store {path}: {name}/{key} is damaged ({what}). " + _FIX.format(path=path)
          )
  return problems


def read_progress(path: str) -> dict | None:
  p = os.path.join(path, PROGRESS)
  if not os.path.exists(p):
    return None
  return atomic_io.read_json(p)


def group_file(path: str, group: int) -> str:
  return os.path.join(path, GROUPS, f"{group:08d}.json")


def groups_done(path: str) -> set[int]:
  """The chunk groups whose rows, checksums and statistics are durably written."""
  d = os.path.join(path, GROUPS)
  if not os.path.isdir(d):
    return set()
  return {int(n[:-5]) for n in os.listdir(d) if n.endswith(".json") and n[:-5].isdigit()}
