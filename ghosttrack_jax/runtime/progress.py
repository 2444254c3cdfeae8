"""Progress of a long step, with its rate and ETA: a tqdm bar on a terminal, one log line per interval
otherwise (SLURM logs, the test suite's subprocesses), so a log shows where a run is without a bar's
carriage returns.

  with progress.Progress(total=len(batches), desc="answer", unit="question") as bar:
    for batch in batches:
      ...
      bar.update(len(batch), accuracy=f"{acc:.2f}")   # postfix fields are optional

  for item in progress.track(items, desc="track", unit="text"):   # an iterable, one update per item
    ...

The mode comes from the environment: GHOSTTRACK_PROGRESS=bar|log|off (default: bar when stderr is a
terminal, else log) and GHOSTTRACK_PROGRESS_INTERVAL (seconds between log lines, default 30; the last
line is always written). Only process 0 of a multi-process run reports.
"""

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

from ghosttrack_jax.runtime import multihost

T = TypeVar("T")
_FORMAT = (
  "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


def mode() -> str:
  """ "bar", "log" or "off" (see the module docstring)."""
  if not multihost.is_primary():
    return "off"
  chosen = os.environ.get("GHOSTTRACK_PROGRESS", "").strip().lower()
  if chosen in ("bar", "log", "off"):
    return chosen
  return "bar" if sys.stderr.isatty() else "log"


class Progress:
  """Counts `total` units of one step (a context manager); `initial` units were done before (a resume)."""

  def __init__(
    self, total: int, desc: str, unit: str = "it", initial: int = 0, interval_s: float | None = None
  ):
    self.total, self.desc, self.unit = int(total), desc, unit
    self.mode = mode()
    self.interval = (
      float(os.environ.get("GHOSTTRACK_PROGRESS_INTERVAL", 30)) if interval_s is None else float(interval_s)
    )
    self.n = self.start = int(initial)
    self.postfix: dict = {}
    self.t0 = self.last_log = time.monotonic()
    self.bar = None
    if self.mode == "bar":
      self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True)

  def update(self, n: int = 1, **postfix) -> None:
    """`n` more units done; `postfix` fields (name=value) are shown after the rate until replaced."""
    self.n += n
    if postfix:
      self.postfix.update({k: v for k, v in postfix.items() if v is not None})
    if self.bar is not None:
      if postfix:
        self.bar.set_postfix(self.postfix, refresh=False)
      self.bar.update(n)
    elif self.mode == "log":
      now = time.monotonic()
      if now - self.last_log >= self.interval or self.n >= self.total:
        self.last_log = now
        logging.info("%s", self.line())

  def line(self) -> str:
    """The current state as one line: done/total, percentage, elapsed<remaining, rate, postfix."""
    elapsed = time.monotonic() - self.t0
    rate = (self.n - self.start) / elapsed if elapsed > 0 else None
    postfix = ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items()) if self.postfix else ""
    return tqdm.format_meter(
      self.n,
      self.total,
      elapsed,
      prefix=self.desc,
      unit=self.unit,
      rate=rate,
      initial=self.start,
      bar_format=_FORMAT.replace("{postfix}", postfix.replace("{", "{{").replace("}", "}}")),
    )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def track(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
  """Yields `items`, each counted as it is handed out (so a consumer that stops at the last one it
  needs still ends at its total; total: len(items) unless given)."""
  total = len(items) if total is None else total  # type: ignore[arg-type]
  with Progress(total, desc, unit) as bar:
    for item in items:
      bar.update(1)
      yield item
