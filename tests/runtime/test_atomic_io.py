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


def test_files_get_the_mode_of_the_umask(tmp_path):
  """Not the 0600 of the temporary file: a results folder shared with a group stays readable."""
  code = (
    "import os, sys; os.umask(int(sys.argv[2], 8))\n"
    "from ghosttrack_jax.runtime import atomic_io\n"
    "atomic_io.atomic_write_text(sys.argv[1], 'x')\n"
  )
  for umask, mode in (("022", 0o644), ("002", 0o664), ("077", 0o600)):
    path = str(tmp_path / f"f{umask}")
    subprocess.run([sys.executable, "-c", code, path, umask], check=True, timeout=120)
    assert os.stat(path).st_mode & 0o777 == mode, umask


def test_a_file_with_the_same_bytes_is_not_rewritten(tmp_path):
  path = str(tmp_path / "report.md")
  atomic_io.atomic_write_text(path, "same\n")
  before = os.stat(path).st_ino
  atomic_io.atomic_write_text(path, "same\n")
  assert os.stat(path).st_ino == before  # a write would have renamed a new file (a new inode) onto it
  atomic_io.atomic_write_text(path, "other\n")
  assert os.stat(path).st_ino != before


def test_an_unreadable_json_file_names_itself_and_its_stage(tmp_path):
  """Any JSON file a stage wrote (meta.json, COMPLETE, progress.json, key.json, ...) that is not UTF-8 JSON
  is a DamagedOutputError naming it and what to rerun, not a UnicodeDecodeError naming nothing."""
  cases = {
    "cache/m/hidden_states/meta.json": "rerun the 'extract' stage",
    "cache/m/hidden_states/progress.json": "rerun the 'extract' stage",
    "cache/m/answers/nq_open/generations/key.json": "rerun the 'answer' stage",
    "results/m/tracking/nq_open/features.json": "rerun the 'track' stage",
    "results/m/evaluation/report.json": "rerun the 'report' stage",
  }
  for rel, fix in cases.items():
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(DamagedOutputError) as e:
      atomic_io.read_json(str(path))
    assert f"{path} is damaged" in str(e.value) and fix in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)  # readers that recompute an unreadable saved part still do


def test_temporaries_of_killed_writes_are_removed(tmp_path):
  keep = [
    tmp_path / "a.json",
    tmp_path / "store" / "activations" / "zarr.json",
    tmp_path / "store" / "activations" / ".tmp-chunk",
  ]
  gone = [tmp_path / ".tmp-a.json-x", tmp_path / "results" / ".tmp-metrics.json-y"]
  for p in keep + gone:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("x")
  assert sorted(atomic_io.remove_temporaries(str(tmp_path))) == sorted(map(str, gone))
  assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
