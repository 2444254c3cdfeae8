"""Where the optional SAELens checks find sae_lens: this interpreter, $GHOSTTRACK_SAELENS_PYTHON, or the
benchmark's .venv-bench-sae (benchmarks/sae_train.py). Tests that need it skip without one."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_REASON = (
  "no interpreter with sae_lens (optional; see benchmarks/sae_train.py for the .venv-bench-sae environment)"
)


def python() -> str | None:
  """An interpreter with sae_lens, or None."""
  if importlib.util.find_spec("sae_lens") is not None:
    return sys.executable
  for candidate in (
    os.environ.get("GHOSTTRACK_SAELENS_PYTHON"),
    os.path.join(REPO, ".venv-bench-sae", "bin", "python"),
  ):
    if candidate and os.path.exists(candidate):
      return candidate
  return None
