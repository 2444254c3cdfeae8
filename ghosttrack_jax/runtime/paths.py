"""Where each stage's outputs live (everything is organised per model under the workdir), where the
shipped configs and data are, and which stage writes a given output file.

The shipped `configs/` and `data/` sit in the checkout's root; a wheel carries them inside the package
(its `shipped/` folder, pyproject.toml), so an installed package finds them from any directory.
`REPO_ROOT` is whichever of the two this package runs from.
"""

import dataclasses
import os

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECKOUT = os.path.dirname(PACKAGE_DIR)
IN_CHECKOUT = os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml")) and os.path.isdir(
  os.path.join(_CHECKOUT, "configs")
)
# The folder holding configs/ and data/ (and, in a checkout, docs/ and .git).
REPO_ROOT = _CHECKOUT if IN_CHECKOUT else os.path.join(PACKAGE_DIR, "shipped")


def repo_relative(path: str) -> str:
  """`path` as given when it exists from the current folder (or is absolute or a URI-like "hf:..."),
  else the same path under the repository root if it exists there, else `path` unchanged."""
  if path.startswith("hf:") or os.path.isabs(path) or os.path.exists(path):
    return path
  candidate = os.path.join(REPO_ROOT, path)
  return candidate if os.path.exists(candidate) else path


# Workdir layout: (top folder, folder under <model>) -> (the stage that writes it, levels of its folder).
_WRITERS = {
  ("cache", "hidden_states"): ("extract", 3),
  ("cache", "answers"): ("answer", 4),  # answers/<dataset>
  ("checkpoints", "train_state"): ("train", 3),
  ("checkpoints", "saelens"): ("train", 3),
  ("results", "sae"): ("train", 3),
  ("results", "tracking"): ("track", 4),
  ("results", "detection"): ("detect", 4),
  ("results", "evaluation"): ("evaluate", 4),  # evaluation/<dataset>; report.* and dashboards/: report
}


def writer_of(path: str) -> tuple[str, str] | None:
  """(stage, folder to delete to redo it) for a file under a workdir's cache/, checkpoints/ or results/
  (docs/DESIGN.md, "Stages and files"); None for any other path."""
  parts = os.path.abspath(path).split(os.sep)
  for i in range(len(parts) - 3, -1, -1):
    if (parts[i], parts[i + 2]) not in _WRITERS:
      continue
    stage, levels = _WRITERS[(parts[i], parts[i + 2])]
    if stage == "evaluate" and (len(parts) == i + 4 or parts[i + 3] == "dashboards"):
      return "report", os.sep.join(parts)  # rebuilt on every run: the file alone
    return stage, os.sep.join(parts[: min(i + levels, len(parts) - 1)])
  return None


def rerun_fix(path: str) -> str:
  """What to do about a damaged output file: delete its folder and rerun the stage that writes it."""
  owner = writer_of(path)
  if owner is None:
    return "delete it and rerun the stage that writes it (docs/DESIGN.md, 'Stages and files')"
  stage, folder = owner
  return f"delete {folder} and rerun the '{stage}' stage (and the stages after it)"


@dataclasses.dataclass(frozen=True)
class ModelPaths:
  """Output folders for one model (`config.model.name`) under `workdir`."""

  workdir: str
  model: str

  @property
  def cache(self) -> str:
    return os.path.join(self.workdir, "cache", self.model)

  @property
  def hidden_states(self) -> str:
    return os.path.join(self.cache, "hidden_states")

  def answers(self, dataset: str) -> str:
    return os.path.join(self.cache, "answers", dataset)

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.workdir, "checkpoints", self.model)

  @property
  def sae_export(self) -> str:
    """SAELens-format export, one folder per layer."""
    return os.path.join(self.checkpoints, "saelens")

  @property
  def results(self) -> str:
    return os.path.join(self.workdir, "results", self.model)

  @property
  def sae_results(self) -> str:
    return os.path.join(self.results, "sae")

  @property
  def tracking(self) -> str:
    return os.path.join(self.results, "tracking")

  @property
  def detection(self) -> str:
    return os.path.join(self.results, "detection")

  @property
  def evaluation(self) -> str:
    return os.path.join(self.results, "evaluation")


def for_config(config, workdir: str) -> ModelPaths:
  return ModelPaths(os.path.abspath(workdir), config.model.name)
