"""Where each stage's outputs live: everything is organised per model under the workdir."""

import dataclasses
import os


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
