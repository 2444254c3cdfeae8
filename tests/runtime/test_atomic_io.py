"""Atomic writes and completion records: a full disk during a write leaves the previous complete file
untouched and no temporary file behind (on a real full tmpfs); DONE records checksums that tell a damaged
file."""

import errno
import os
import subprocess
import sys

import disk_full
import numpy as np
import pytest

from ghosttrack_jax.errors import DamagedOutputError
from ghosttrack_jax.runtime import atomic_io

BIG = 1 << 20  # bytes of the new content: more than the space left


def _writes(d):
  """(path, write the old content, write the new, too-big content) for each atomic writer."""
  return [
    (os.path.join(d, "a.json"), lambda p: atomic_io.atomic_write_json(p, {"v": 1}),
     lambda p: atomic_io.atomic_write_json(p, {"v": "x" * BIG})),
    (os.path.join(d, "a.txt"), lambda p: atomic_io.atomic_write_text(p, "old\n"),
     lambda p: atomic_io.atomic_write_text(p, "y" * BIG)),
    (os.path.join(d, "a.bin"), lambda p: atomic_io.atomic_write_bytes(p, b"old"),
     lambda p: atomic_io.atomic_write_bytes(p, os.urandom(BIG))),
    (os.path.join(d, "a.npz"), lambda p: atomic_io.atomic_save_npz(p, x=np.arange(3)),
     lambda p: atomic_io.atomic_save_npz(p, x=np.random.default_rng(0).random(BIG // 8))),
  ]  # fmt: skip


def test_disk_full_during_a_write_leaves_the_previous_file(tmp_path):
  with disk_full.small_filesystem(tmp_path, mib=8) as mnt:
    if mnt is None:
      pytest.skip("mounting a tmpfs is not permitted here; test_file_size_limit_stand_in covers the logic")
    d = os.path.join(mnt, "out")
    writes = _writes(d)
    old = {}
    for path, write_old, _ in writes:
      write_old(path)
      with open(path, "rb") as f:
        old[path] = f.read()
    disk_full.fill(mnt, leave=64 << 10)
    for path, _, write_new in writes:
      with pytest.raises(OSError) as e:
        write_new(path)
      assert e.value.errno == errno.ENOSPC, e.value
      with open(path, "rb") as f:
        assert f.read() == old[path], path
    assert sorted(os.listdir(d)) == sorted(os.path.basename(p) for p, _, _ in writes)  # no temporaries
    disk_full.free(mnt)
    for path, _, write_new in writes:  # with space again the same writes succeed
      write_new(path)


_STAND_IN = """
import os, resource, signal, sys
sys.path.insert(0, {tests!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a signal
from test_atomic_io import _writes
writes = _writes({d!r})
for path, write_old, _ in writes:
  write_old(path)
old = {{p: open(p, "rb").read() for p, _, _ in writes}}
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
for path, _, write_new in writes:
  try:
    write_new(path)
    sys.exit(f"{{path}}: no error")
  except OSError as e:
    assert e.errno == 27, e  # EFBIG
  assert open(path, "rb").read() == old[path], path
assert sorted(os.listdir({d!r})) == sorted(os.path.basename(p) for p, _, _ in writes), os.listdir({d!r})
print("ok")
"""


def test_file_size_limit_stand_in(tmp_path):
  """The same property under RLIMIT_FSIZE (EFBIG on the write), which needs no mount: a stand-in for a
  full disk where mounting a small filesystem is not permitted (the tmpfs test above is the real one)."""
  d = str(tmp_path / "out")
  tests = os.path.dirname(os.path.abspath(__file__))
  code = _STAND_IN.format(tests=tests, d=d)
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), os.environ.get("PYTHONPATH", "")]),
  }
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_done_records_checksums_that_tell_a_damaged_file(tmp_path):
  d = str(tmp_path)
  atomic_io.atomic_write_text(os.path.join(d, "a.txt"), "hello\n")
  atomic_io.atomic_write_text(os.path.join(d, "b.txt"), "world\n")
  atomic_io.write_done(d, {"n": 2}, files=("a.txt", "b.txt"))
  assert atomic_io.read_done(d, "fix")["n"] == 2
  assert atomic_io.recorded_files(d, "fix") == ["a.txt", "b.txt"]
  atomic_io.verify_done(d, ("a.txt", "b.txt", "not_recorded.txt"), "fix")
  with open(os.path.join(d, "b.txt"), "w", encoding="utf-8") as f:
    f.write("World\n")  # same size, one byte changed
  with pytest.raises(DamagedOutputError, match=r"b\.txt is damaged.*: rerun it"):
    atomic_io.verify_done(d, ("b.txt",), "rerun it")
  atomic_io.verify_done(d, ("a.txt",), "fix")  # the other file is still fine
  os.remove(os.path.join(d, "a.txt"))
  with pytest.raises(DamagedOutputError, match="a.txt is missing"):
    atomic_io.verify_done(d, ("a.txt",), "fix")


def test_a_done_without_checksums_is_accepted_with_a_warning(tmp_path, caplog):
  d = str(tmp_path)
  atomic_io.write_done(d, {"n": 1})  # as written before checksums were recorded
  atomic_io.verify_done(d, ("a.txt",), "fix")
  assert "before checksums were recorded" in caplog.text
