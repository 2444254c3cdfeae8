"""User-facing errors: each says what is wrong and what to do about it."""


class GhostTrackError(Exception):
  """Base class for errors caused by bad input (config, data, model, stored files)."""


class ConfigError(GhostTrackError):
  """A config value is missing, misspelt or out of range."""


class DataError(GhostTrackError):
  """Input data (corpus, QA set) is missing, empty or malformed."""


class ModelLoadError(GhostTrackError):
  """A model file or hub id cannot be loaded."""


class IncompleteStoreError(GhostTrackError):
  """A stage output exists but was never completed (no completion marker)."""


class DamagedOutputError(GhostTrackError):
  """A finished output's file is missing, truncated or changed since its stage wrote it (its checksum in
  the folder's DONE record differs)."""


class StoreMismatchError(GhostTrackError):
  """A stored artefact was made for another model/config than the one requested."""


class NonFiniteLossError(GhostTrackError):
  """Training produced NaN or Inf."""


class DamagedStoreError(DamagedOutputError):
  """An activation store chunk or an SAE checkpoint is truncated, missing or fails its checksum."""


class WorkdirBusyError(GhostTrackError):
  """Another run holds the workdir (runtime.workdir_lock)."""
