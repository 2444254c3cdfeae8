"""Atomic file writes and completion markers.

Every output is written to a temporary file in the same directory and renamed into place, so a
reader never sees half a file. A directory is complete only once its `DONE`/`COMPLETE` marker exists;
markers are written last.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj)}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + "-")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


DONE = "DONE"


def write_done(directory: str, info: dict | None = None) -> None:
  """Marks `directory` complete. Call only after everything else in it is written."""
  atomic_write_json(os.path.join(directory, DONE), info or {})


def is_done(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, DONE))


def clear_done(directory: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(directory, DONE))


def file_sha256(path: str) -> str:
  """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks): the one file-hash helper."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def files_sha256(paths) -> str:
  """One SHA-256 over the bytes of several files, in the order given."""
  h = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()
