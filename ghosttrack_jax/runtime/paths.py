"""Where each stage's outputs live: everything is organised per model under the workdir."""

import dataclasses
import os

# The checkout's root: shipped data (data/) and configs are found relative to it from any directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repo_relative(path: str) -> str:
  """`path` as given when it exists from the current folder (or is absolute or a URI-like "hf:..."),
  else the same path under the repository root if it exists there, else `path` unchanged."""
  if path.startswith("hf:") or os.path.isabs(path) or os.path.exists(path):
    return path
  candidate = os.path.join(REPO_ROOT, path)
  return candidate if os.path.exists(candidate) else path


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
