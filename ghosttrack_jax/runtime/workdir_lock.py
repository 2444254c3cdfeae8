"""One run per workdir: a lock that a second run is refused by, naming the run that holds it.

  with workdir_lock.hold(workdir):   # WorkdirBusyError when another run holds it
    pipeline.run(config, workdir, stages)

The lock is `flock` on `<workdir>/.ghosttrack.lock` (on Linux NFS clients flock is carried by NFS
byte-range locks, so it holds across nodes). The kernel releases it when the holding process ends, however
it ends, so a run killed with SIGKILL leaves no stale lock behind: the file stays, with the last holder's
record (host, pid, SLURM job), which the next run reads to say that the previous run was interrupted.

A SLURM requeue keeps its job id. When the holder's record names this process's own SLURM job, the
holder is that job's previous incarnation, still stopping (or its node's NFS lease not yet expired), so
the run waits for it (up to `REQUEUE_WAIT_S`) instead of refusing.

Holding the lock is also what makes it safe to delete the temporary files that killed runs left
(`atomic_io.remove_temporaries`): no other run of this workdir is writing.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Iterator

from ghosttrack_jax.errors import WorkdirBusyError

LOCK_NAME = ".ghosttrack.lock"
REQUEUE_WAIT_S = 300.0  # SLURM's KillWait (30 s by default) plus an NFS lease (90 s), with margin
_POLL_S = 1.0
_UNLOCKED = "workdir %s is read-only: not locked (this run can only reuse finished outputs)"


def holder_record() -> dict:
  """What the lock file says about the run holding it."""
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "command": " ".join(sys.argv),
  }


def _describe(record: dict) -> str:
  if not record:
    return "another run (its record is not written yet)"
  job = f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
  return (
    f"the run with pid {record.get('pid')} on host {record.get('host')}{job}, started {record.get('started')}"
  )


def _read_record(fd: int) -> dict:
  try:
    data = os.pread(fd, 1 << 16, 0)
    record = json.loads(data.decode("utf-8")) if data.strip() else {}
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def _open(path: str) -> int | None:
  """The lock file open for writing, or read-only on a read-only workdir; None when it cannot exist."""
  try:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
  except OSError as e:
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
  try:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except FileNotFoundError:
    return None


@contextlib.contextmanager
def hold(workdir: str, wait_same_job_s: float = REQUEUE_WAIT_S) -> Iterator[dict]:
  """Holds the workdir's lock for the block; yields the record of the previous holder ({} if none, or
  if it released the lock at its end). Raises WorkdirBusyError when another run holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd = _open(path)
  if fd is None:  # a read-only workdir without a lock file: nothing can be written there by anyone
    logging.info(_UNLOCKED, workdir)
    yield {}
    return
  try:
    mine = os.environ.get("SLURM_JOB_ID")
    deadline = None
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        other = _read_record(fd)
        # Once the holder was seen to be this job's previous run, its emptied record (it is releasing) is
        # still that run.
        if deadline is None and not (mine and other.get("slurm_job_id") == mine):
          raise WorkdirBusyError(
            f"{workdir} is in use by {_describe(other)}: two runs in one workdir would overwrite each "
            f"other's outputs. Wait for it to finish (or stop it), or use another --workdir. The lock is "
            f"{path}; the kernel releases it when that process ends."
          ) from None
        if deadline is None:
          deadline = time.monotonic() + wait_same_job_s
          logging.warning(
            "%s is held by the previous run of this SLURM job (%s): waiting up to %.0f s for it to stop",
            workdir,
            _describe(other),
            wait_same_job_s,
          )
        if time.monotonic() > deadline:
          raise WorkdirBusyError(
            f"{workdir} is still held by {_describe(other)} after {wait_same_job_s:.0f} s: stop that "
            "process (it is this job's previous run), then resubmit"
          ) from None
        time.sleep(_POLL_S)
      except OSError as e:  # NFS refuses an exclusive lock on a file opened read-only
        if e.errno != errno.EBADF:
          raise
        logging.info(_UNLOCKED, workdir)
        break
    previous = _read_record(fd)
    if previous:
      logging.info(
        "the previous run in %s (%s) stopped before it finished; resuming", workdir, _describe(previous)
      )
    writable = True
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode("utf-8"), 0)
    except OSError:
      writable = False  # opened read-only: the record of the last writer stays
    try:
      yield previous
    finally:
      if writable:
        with contextlib.suppress(OSError):
          os.ftruncate(fd, 0)  # an empty record: the run ended and released the lock itself
  finally:
    os.close(fd)  # releases the flock


def holder(workdir: str) -> dict | None:
  """The record of the run holding the workdir's lock now, or None when no run holds it."""
  path = os.path.join(workdir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_record(fd)
    return None
  finally:
    os.close(fd)
