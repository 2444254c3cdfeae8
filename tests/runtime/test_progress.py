"""Progress reporting: one log line per interval with the rate and ETA where stderr is not a terminal (SLURM
logs), the last line always; nothing when off; the iterable helper counts what it hands out."""

import logging
import re

import pytest

from ghosttrack_jax.runtime import progress


@pytest.fixture
def log_mode(monkeypatch, caplog):
  monkeypatch.setenv("GHOSTTRACK_PROGRESS", "log")
  caplog.set_level(logging.INFO)
  return caplog


def test_log_lines_carry_count_rate_eta_and_postfix(log_mode, monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
  with progress.Progress(10, "train SAEs", "step", initial=2, interval_s=5) as bar:
    for _ in range(8):
      clock[0] += 1.0  # one step per second
      bar.update(1, loss="0.25")
  lines = [r.getMessage() for r in log_mode.records]
  # at 5 s (interval) and at the end (the total): 7/10 and 10/10 of the 8 steps run in this process
  assert len(lines) == 2, lines
  assert lines[0].startswith("train SAEs: 7/10 step (70%)")
  assert re.search(r"\[00:05<00:03, +1\.00step/s, loss=0\.25\]", lines[0]), lines[0]  # ETA: 3 steps left
  assert lines[1].startswith("train SAEs: 10/10 step (100%) [00:08<00:00")


def test_off_mode_reports_nothing(monkeypatch, caplog, capsys):
  monkeypatch.setenv("GHOSTTRACK_PROGRESS", "off")
  caplog.set_level(logging.INFO)
  assert list(progress.track(range(4), "export", "layer")) == [0, 1, 2, 3]
  assert not caplog.records and not capsys.readouterr().err


def test_bar_mode_draws_a_tqdm_bar(monkeypatch, capsys):
  monkeypatch.setenv("GHOSTTRACK_PROGRESS", "bar")
  with progress.Progress(3, "extract", "batch") as bar:
    bar.update(3, tok_s="512")
  err = capsys.readouterr().err
  assert "extract" in err and "3/3" in err and "tok_s=512" in err


def test_track_counts_items_as_handed_out(log_mode):
  for i, _ in enumerate(progress.track(iter(range(100)), "tokenise", "window", total=5)):
    if i == 4:
      break  # a consumer that stops at the last item it needs
  assert log_mode.records[-1].getMessage().startswith("tokenise: 5/5 window (100%)")
