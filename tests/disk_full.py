"""A real full disk for tests: a small tmpfs mounted under the test's tmp folder (needs root, or
CAP_SYS_ADMIN), and a filler file that leaves a chosen number of bytes free.

  with disk_full.small_filesystem(tmp_path, mib=16) as mnt:   # None when mounting is not permitted
    ...; disk_full.fill(mnt, leave=16 << 10); ...; disk_full.free(mnt)
"""

import contextlib
import os
import subprocess

FILLER = ".filler"


@contextlib.contextmanager
def small_filesystem(tmp_path, mib: int):
  """Yields the path of a fresh `mib`-MiB tmpfs (unmounted afterwards), or None where mount fails."""
  mnt = os.path.join(str(tmp_path), "small_fs")
  os.makedirs(mnt, exist_ok=True)
  try:
    proc = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", mnt], capture_output=True, text=True, timeout=30
    )
  except OSError:
    proc = None
  if proc is None or proc.returncode:
    yield None
    return
  try:
    yield mnt
  finally:
    subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30, check=False)


def free_bytes(mnt: str) -> int:
  st = os.statvfs(mnt)
  return st.f_bavail * st.f_frsize


def fill(mnt: str, leave: int) -> None:
  """Writes a filler file so that about `leave` bytes stay free on the filesystem of `mnt`."""
  with open(os.path.join(mnt, FILLER), "ab") as f:
    todo = free_bytes(mnt) - leave
    while todo > 0:
      n = min(todo, 1 << 20)
      f.write(b"\0" * n)
      todo -= n
    f.flush()
    os.fsync(f.fileno())


def free(mnt: str) -> None:
  """Removes the filler file."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(mnt, FILLER))
