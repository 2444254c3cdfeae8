"""The command line's one-line errors: the messages of TensorStore, Orbax and Python for a full disk or an
unwritable workdir are recognised (and nothing else is), and --config is found in the shipped configs."""

import errno
import os

from ghosttrack_jax.errors import DataError
from ghosttrack_jax.runtime import paths
from ghosttrack_jax.tools import command_line

TENSORSTORE_ENOSPC = (
  'RESOURCE_EXHAUSTED: Error writing local file "/w/cache/m/hidden_states/activations/c/0/8/0": Failed to '
  "write 26624 bytes to file 4: No space left on device [os_error_code='28']"
)


def test_disk_full_in_any_library_is_one_line():
  orbax = RuntimeError("Save Finalize thread failed")
  orbax.__cause__ = ValueError(TENSORSTORE_ENOSPC)
  for e in (OSError(errno.ENOSPC, "No space left on device"), ValueError(TENSORSTORE_ENOSPC), orbax):
    line = command_line.error_line(e, "/w")
    assert line.startswith("disk full") and "free space under /w and rerun the same command" in line, e


def test_other_errors_keep_their_traceback():
  assert (
    command_line.error_line(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"), "/w")
    is None
  )
  assert command_line.error_line(KeyError("x"), "/w") is None
  # Permission denied outside the workdir (a model file, say) is not a workdir problem.
  assert (
    command_line.error_line(PermissionError(errno.EACCES, "Permission denied", "/models/x"), "/w") is None
  )
  line = command_line.error_line(OSError(errno.EROFS, "Read-only file system", "/w/results/m/x.json"), "/w")
  assert line.startswith("cannot write in the workdir") and "/w/results/m/x.json" in line
  assert command_line.error_line(DataError("bad file"), "/w") == "DataError: bad file"


def test_config_is_found_in_the_shipped_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # not the checkout: configs/tiny.py is not here
  shipped = os.path.join(paths.REPO_ROOT, "configs", "tiny.py")
  for arg in ("configs/tiny.py", "tiny.py", "tiny"):
    assert command_line.resolve_config_arg(["g", f"--config={arg}:default", "--x=1"]) == [
      "g",
      f"--config={shipped}:default",
      "--x=1",
    ]
  assert command_line.resolve_config_arg(["g", "--config", "tiny"]) == ["g", "--config", shipped]
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text("")
  assert command_line.resolve_config_arg(["g", "--config=configs/tiny.py"]) == [
    "g",
    "--config=configs/tiny.py",
  ]


def test_the_writer_of_each_output_folder():
  w = "/w"
  assert paths.writer_of(f"{w}/cache/m/hidden_states/meta.json") == ("extract", f"{w}/cache/m/hidden_states")
  assert paths.writer_of(f"{w}/cache/m/answers/ds/generations/key.json") == (
    "answer",
    f"{w}/cache/m/answers/ds",
  )
  assert paths.writer_of(f"{w}/checkpoints/m/saelens/DONE") == ("train", f"{w}/checkpoints/m/saelens")
  assert paths.writer_of(f"{w}/results/m/detection/ds/detector/manifest.json") == (
    "detect",
    f"{w}/results/m/detection/ds",
  )
  assert paths.writer_of(f"{w}/results/m/evaluation/ds/metrics.json") == (
    "evaluate",
    f"{w}/results/m/evaluation/ds",
  )
  assert paths.writer_of(f"{w}/results/m/evaluation/report.json") == (
    "report",
    f"{w}/results/m/evaluation/report.json",
  )
  assert paths.writer_of("/tmp/questions.json") is None
