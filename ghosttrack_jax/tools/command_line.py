"""What the command-line entry points share: flags parsed with one-line errors, `--config` found in the
installed package, and the exit statuses.

  app.run(main, flags_parser=command_line.parse_flags)

`--config=configs/tiny.py[:preset]` is read as given when that file exists; else it is looked up under the
shipped configs (runtime.paths.REPO_ROOT: the checkout, or the copy inside an installed wheel), also as
`--config=tiny`. A config file that cannot be loaded, an unknown preset, a misspelt or badly typed
`--config.x.y=` override and an unknown flag each stop the command with one line naming it (absl and
ml_collections would print tracebacks), exit status 2.
"""

import difflib
import errno
import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_dict

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import GhostTrackError
from ghosttrack_jax.runtime import paths

EXIT_ERROR = 2  # a GhostTrackError: bad input, refused, damaged output (also absl's usage errors)
_CONFIG_FLAG = "config"

# Write errors that mean "no space": the device is full, a quota is reached, or the file-size limit. Python
# raises OSError with the errno; TensorStore and Orbax raise ValueError/RuntimeError with the C library's
# text ("RESOURCE_EXHAUSTED: ... No space left on device"), so both are recognised.
_DISK_FULL = {
  errno.ENOSPC: "No space left on device",
  errno.EDQUOT: "Disk quota exceeded",
  errno.EFBIG: "File too large",
}
_NOT_WRITABLE = {
  errno.EROFS: "Read-only file system",
  errno.EACCES: "Permission denied",
  errno.EPERM: "Operation not permitted",
}


def _chain(e: BaseException):
  """`e`, its causes and contexts, and the members of exception groups."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]


def _os_problem(e: BaseException, kinds: dict) -> str | None:
  """The description of the first error in `e`'s chain that is one of `kinds` (errno -> C text)."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in kinds:
      return f"{x.strerror}: {x.filename}" if x.filename else x.strerror
    text = str(x)
    for text_kind in kinds.values():
      if text_kind in text:
        return _last_line(text)[:300]
  return None


def is_disk_full(e: BaseException) -> bool:
  return _os_problem(e, _DISK_FULL) is not None


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of Orbax and the XLA bridge (dozens of lines per checkpoint), and Orbax's
  tracebacks of a checkpoint write that failed for want of space (from three of its threads): the
  failure reaches the command, which says it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    orbax = "/orbax/" in record.pathname
    if orbax and record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
      return False
    noisy = orbax or record.pathname.endswith("xla_bridge.py")
    return record.levelno >= logging.WARNING or not noisy


def _loop_closed_callback(value, tb) -> bool:
  """True for TensorStore's write callback that found Orbax's event loop already closed: after a failed
  checkpoint write Orbax closes the loop while other writes' callbacks are pending. Harmless (the write
  failed and is reported); C code reports it as an unraisable exception, once per pending write."""
  return (
    isinstance(value, RuntimeError)
    and str(value) == "Event loop is closed"
    and tb is not None
    and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
  )


def quiet_libraries() -> None:
  """Installs the filter above on the log handlers, and drops the reports of `_loop_closed_callback`.
  Any other traceback is printed as always."""
  quiet = _QuietLibraries()
  for handler in logging.getLogger().handlers:
    handler.addFilter(quiet)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _loop_closed_callback(unraisable.exc_value, unraisable.exc_traceback):
      previous(unraisable)

  sys.unraisablehook = hook


def error_line(e: BaseException, workdir: str) -> str | None:
  """One line for an error the user can fix (GhostTrackError, a full disk, a workdir that cannot be
  written); None for anything else, a bug whose traceback is wanted."""
  if isinstance(e, GhostTrackError):
    return f"{type(e).__name__}: {e}"
  full = _os_problem(e, _DISK_FULL)
  if full:
    # Writes are atomic (runtime.atomic_io, TensorStore chunks, Orbax's temporary checkpoint folders):
    # the file being written was discarded, the previous complete outputs are untouched and nothing
    # half-written is marked complete.
    return (
      f"disk full ({full}): outputs finished before are kept and nothing half-written is used; free "
      f"space under {workdir} and rerun the same command"
    )
  denied = _os_problem(e, _NOT_WRITABLE)
  if denied and (os.path.abspath(workdir) in denied or os.path.realpath(workdir) in denied):
    return (
      f"cannot write in the workdir ({denied}): the stages still to run write under {workdir}; make it "
      "writable, or copy it to writable storage and pass that as --workdir"
    )
  return None


def config_candidates(path: str) -> list[str]:
  """Where `--config=<path>` is looked for, in order."""
  if os.path.isabs(path):
    return [path]
  shipped = os.path.join(paths.REPO_ROOT, "configs")
  out = [path, os.path.join(paths.REPO_ROOT, path), os.path.join(shipped, path)]
  if not path.endswith(".py"):
    out.append(os.path.join(shipped, path + ".py"))
  return out


def resolve_config_arg(argv: list[str]) -> list[str]:
  """argv with the `--config` file replaced by the first of its candidates that exists."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f"--{_CONFIG_FLAG}="):
      value, at = arg.split("=", 1)[1], (i, f"--{_CONFIG_FLAG}=")
    elif arg == f"--{_CONFIG_FLAG}" and i + 1 < len(out):
      value, at = out[i + 1], (i + 1, "")
    else:
      continue
    path, colon, preset = value.partition(":")
    found = next((c for c in config_candidates(path) if os.path.isfile(c)), None)
    if found:
      out[at[0]] = at[1] + found + colon + preset
  return out


def _config_arg(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{_CONFIG_FLAG}="):
      return arg.split("=", 1)[1]
    if arg == f"--{_CONFIG_FLAG}" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  line = lines[-1] if lines else str(text)
  return re.sub(r"^(\w+\.)*\w+(Error|Exception): ", "", line)


def _override_problem(argv, message: str) -> str | None:
  """The misspelt `--config.a.b` override that `message` (ml_collections' KeyError/AttributeError) is
  about, with the closest field names."""
  fields = config_lib.field_names(config_lib.base_config())
  overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith(f"--{_CONFIG_FLAG}.")]
  for override in overrides:
    dotted = override[len(_CONFIG_FLAG) + 1 :]
    if dotted in fields or any(f.startswith(dotted + ".") for f in fields):
      continue
    if not any(f"'{part}'" in message or f'"{part}"' in message for part in dotted.split(".")):
      continue
    close = difflib.get_close_matches(dotted, fields, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""
    return (
      f"--{override}: the config has no field {dotted!r}{hint} (every field: ghosttrack_jax/config_lib.py)"
    )
  return None


def config_error_line(argv, e: BaseException) -> str:
  """One line for an error met while parsing the flags or loading the config file."""
  if isinstance(e, GhostTrackError):
    return f"{type(e).__name__}: {e}"
  if isinstance(e, (AttributeError, KeyError)):
    found = _override_problem(argv, str(e))
    if found:
      return f"ConfigError: {found}"
  if isinstance(e, OSError) and "earlier failure to load" in str(e):
    path = _config_arg(argv).partition(":")[0]
    if not any(os.path.isfile(c) for c in config_candidates(path)):
      return (
        f"ConfigError: --config={path}: no such config file (looked in {os.getcwd()} and "
        f"{os.path.join(paths.REPO_ROOT, 'configs')}); the shipped ones are "
        f"{', '.join(sorted(n for n in os.listdir(os.path.join(paths.REPO_ROOT, 'configs')) if n.endswith('.py')))}"
      )
  cause = e.__cause__ or e.__context__
  if isinstance(cause, GhostTrackError):
    return f"{type(cause).__name__}: {cause}"
  line = _last_line(e)
  return f"ConfigError: {line}" if _CONFIG_FLAG in str(e) else f"UsageError: {line} (see --helpfull)"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with `--config` resolved and every error as one line on stderr (exit 2)."""
  argv = resolve_config_arg(argv)
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG_FLAG in flags.FLAGS and flags.FLAGS[_CONFIG_FLAG].present:
      config = flags.FLAGS[_CONFIG_FLAG].value
      if not isinstance(config, config_dict.ConfigDict):  # a file that failed to load raises here
        config.get("model")
  except Exception as e:  # noqa: BLE001  (absl, ml_collections and config files raise many types)
    sys.stderr.write(config_error_line(argv, e) + "\n")
    sys.exit(EXIT_ERROR)
  return rest
