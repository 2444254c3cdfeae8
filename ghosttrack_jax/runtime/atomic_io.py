"""Atomic file writes and completion markers.

Every output is written to a temporary file in the same directory and renamed into place, so a
reader never sees half a file. A directory is complete only once its `DONE`/`COMPLETE` marker exists;
markers are written last. A file gets the permissions the umask gives a new file (as `open` would), not
the private 0600 of its temporary file, so a shared results folder stays readable to its group.

A kill between creating a temporary file and renaming it leaves the temporary file (`TEMP_PREFIX`) behind;
`remove_temporaries` deletes them, which is safe only while no other run writes the workdir (main calls
it holding runtime.workdir_lock).
"""

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Iterator

import numpy as np

from ghosttrack_jax.errors import DamagedOutputError
from ghosttrack_jax.runtime import paths

TEMP_PREFIX = ".tmp-"


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj)}")


_umask: int | None = None


def new_file_mode() -> int:
  """The mode `open` gives a new file under this process's umask (read once: Linux shows it in
  /proc/self/status; elsewhere reading it means setting it for an instant)."""
  global _umask
  if _umask is None:
    try:
      with open("/proc/self/status", encoding="ascii") as f:
        _umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
      _umask = os.umask(0o022)
      os.umask(_umask)
  return 0o666 & ~_umask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX + os.path.basename(path) + "-")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fchmod(f.fileno(), new_file_mode())
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _holds(path: str, data: bytes) -> bool:
  """True when `path` already holds exactly `data`."""
  try:
    if os.path.getsize(path) != len(data):
      return False
    with open(path, "rb") as f:
      return f.read() == data
  except OSError:
    return False


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically. A file that already holds these bytes is left as it is, so
  rerunning a finished run (the report is rebuilt every run) writes nothing, also on read-only storage."""
  if _holds(path, data):
    return
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


class DamagedJsonError(DamagedOutputError, ValueError):
  """A stage's JSON file that cannot be parsed."""


def read_json(path: str) -> Any:
  """A JSON file a stage wrote. Bytes that are not UTF-8 JSON raise DamagedOutputError naming the file and
  what to rerun (also a ValueError, for the readers that recompute a saved part they cannot read)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
    reason = f"not UTF-8 ({e.reason} at byte {e.start})" if isinstance(e, UnicodeDecodeError) else str(e)
    raise DamagedJsonError(
      f"{path} is damaged: not a JSON file ({reason}); {paths.rerun_fix(path)}"
    ) from None


def remove_temporaries(root: str) -> list[str]:
  """Deletes the temporary files that killed writes left under `root` (not inside TensorStore arrays, which
  hold only chunk files); returns their paths. Only while no other run writes `root` (workdir_lock)."""
  removed = []
  for directory, dirs, names in os.walk(root):
    if "zarr.json" in names:
      dirs[:] = []
      continue
    for name in names:
      if name.startswith(TEMP_PREFIX):
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
          removed.append(path)
  return removed


DONE = "DONE"
DONE_FILES = "files_sha256"  # the DONE record's map: file (relative to the folder) -> SHA-256 hex digest
_UNVERIFIED: set[str] = set()  # folders without checksums already warned about


def write_done(directory: str, info: dict | None = None, files=()) -> None:
  """Marks `directory` complete. Call only after everything else in it is written. The SHA-256 of each
  of `files` (paths relative to `directory`) is recorded, so `verify_done` can tell a damaged file."""
  record = dict(info or {})
  if files:
    record[DONE_FILES] = {name: file_sha256(os.path.join(directory, name)) for name in files}
  atomic_write_json(os.path.join(directory, DONE), record)


def is_done(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, DONE))


def read_done(directory: str, fix: str) -> dict:
  """The DONE record of a finished folder; DamagedOutputError (with `fix`) when it is unreadable."""
  path = os.path.join(directory, DONE)
  try:
    record = read_json(path)
  except OSError as e:
    raise DamagedOutputError(f"{path} cannot be read ({e}): {fix}") from None
  except DamagedJsonError:
    raise DamagedOutputError(f"{path} cannot be read (damaged: not a JSON file): {fix}") from None
  if not isinstance(record, dict):
    raise DamagedOutputError(f"{path} is not a completion record: {fix}")
  return record


def verify_done(directory: str, names, fix: str) -> None:
  """Checks that each of `names` (relative to `directory`) still has the bytes its DONE recorded.

  Raises DamagedOutputError naming the first file that is missing, truncated or changed since the stage
  finished, with `fix` (what to rerun). A name the record does not list (an optional output the stage did
  not write, or a folder finished before checksums were recorded) is not checked.
  """
  record = read_done(directory, fix)
  if DONE_FILES not in record:
    if directory not in _UNVERIFIED:
      _UNVERIFIED.add(directory)
      logging.warning("%s was finished before checksums were recorded: its files are not verified", directory)
    return
  recorded = record[DONE_FILES]
  for name in names:
    if name not in recorded:
      continue
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise DamagedOutputError(f"{path} is missing from a finished output folder: {fix}")
    if file_sha256(path) != recorded[name]:
      raise DamagedOutputError(
        f"{path} is damaged: its bytes differ from the SHA-256 recorded when it was written "
        f"(truncated or modified since): {fix}"
      )


def recorded_files(directory: str, fix: str) -> list[str]:
  """The files whose checksums the DONE record of `directory` holds."""
  return sorted(read_done(directory, fix).get(DONE_FILES, {}))


def clear_done(directory: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(directory, DONE))


# (path, inode, size, mtime) -> digest: a file read several times in one process is hashed once; any
# rewrite (a new inode or mtime) or truncation (a new size) misses the memo.
_SHA_MEMO: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
  """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks): the one file-hash helper."""
  st = os.stat(path)
  key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
  if key not in _SHA_MEMO:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    _SHA_MEMO[key] = h.hexdigest()
  return _SHA_MEMO[key]


def files_sha256(paths) -> str:
  """One SHA-256 over the bytes of several files, in the order given."""
  h = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()
