"""Functions behind the notebooks in notebooks/: load a finished run and look into it.

Every notebook cell calls one of these (or another package function); nothing exists only in a
notebook. A notebook finds its run through two environment variables, with the defaults of `make run`:

  GHOSTTRACK_CONFIG   config file (default configs/smollm2_135m.py); relative paths are taken from the
                      repository root when they do not exist from the current folder
  GHOSTTRACK_WORKDIR  the run's --workdir (default runs/smollm2_135m)

  config, workdir = explore.run_from_env()
"""

import html
import importlib.util
import os

import matplotlib.pyplot as plt
import numpy as np

from ghosttrack_jax import config_lib, lm, stats
from ghosttrack_jax.detect import score
from ghosttrack_jax.errors import ConfigError, IncompleteStoreError
from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.report import dashboard, gather, plots, render
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.sae import trained

REPO = paths.REPO_ROOT
DEFAULT_CONFIG = "configs/smollm2_135m.py"
DEFAULT_WORKDIR = "runs/smollm2_135m"


def repo_path(path: str) -> str:
  """`path` as given when it exists from here (or is absolute), else relative to the repository root."""
  path = os.path.expanduser(path)
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(REPO, path)


def load_config(path: str, overrides: dict | None = None):
  """The ConfigDict of a config file (`file.py` or `file.py:arg`, as --config takes), with overrides
  given as {"sae.width": 4608, ...}."""
  path, _, arg = path.partition(":")
  full = repo_path(path)
  if not os.path.isfile(full):
    raise ConfigError(f"config file {path!r} not found (looked at {full})")
  spec = importlib.util.spec_from_file_location("ghosttrack_user_config", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"config has no field {key!r}")
    node[leaf] = value
  config_lib.validate(config, stages=())  # values and ranges; the run's inputs were checked by its run
  return config


def run_from_env() -> tuple:
  """(config, workdir) from GHOSTTRACK_CONFIG / GHOSTTRACK_WORKDIR (see the module docstring)."""
  config = load_config(os.environ.get("GHOSTTRACK_CONFIG", DEFAULT_CONFIG))
  workdir = repo_path(os.environ.get("GHOSTTRACK_WORKDIR", DEFAULT_WORKDIR))
  if not os.path.isdir(workdir):
    raise IncompleteStoreError(
      f"no run in {workdir}: run the pipeline first (`make run`, or python -m ghosttrack_jax.main "
      "--config=... --workdir=...), or point GHOSTTRACK_WORKDIR at a finished run"
    )
  return config, workdir


def status(config, workdir: str) -> list[dict]:
  """Which stages of the run are finished (their DONE/COMPLETE markers)."""
  p = paths.for_config(config, workdir)
  ds = config_lib.question_set(config)
  marks = [
    ("extract", os.path.join(p.hidden_states, "COMPLETE")),
    ("train", os.path.join(p.sae_results, atomic_io.DONE)),
    ("answer", os.path.join(p.answers(ds), atomic_io.DONE)),
    ("track", os.path.join(p.tracking, ds, atomic_io.DONE)),
    ("detect", os.path.join(p.detection, ds, atomic_io.DONE)),
    ("evaluate", os.path.join(p.evaluation, ds, atomic_io.DONE)),
    ("report", os.path.join(p.evaluation, "report.html")),
  ]
  return [{"stage": s, "done": os.path.exists(m), "path": os.path.dirname(m)} for s, m in marks]


def table(rows: list[dict], columns: list[str] | None = None, digits: int = 4):
  """Rows of dicts as an HTML table object that notebooks display."""
  # IPython exists only where a notebook kernel runs; the rest of this module works without it.
  from IPython.display import HTML  # noqa: PLC0415

  rows = list(rows)
  columns = columns or list(dict.fromkeys(k for r in rows for k in r))

  def cell(v):
    if isinstance(v, float):
      return "n/a" if not np.isfinite(v) else f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):
      return "[" + ", ".join(f"{x:.{digits}g}" for x in v) + "]"
    return str(v)

  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = "".join(
    "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
  )
  return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def show_dashboard(summary: dict, height: int = 900):
  """The answer's dashboard (ghosttrack_jax.report.dashboard) inside the notebook, in an isolated iframe."""
  # IPython exists only where a notebook kernel runs; the rest of this module works without it.
  from IPython.display import HTML  # noqa: PLC0415

  page = html.escape(dashboard.render_dashboard(summary), quote=True)
  return HTML(
    f'<div><iframe srcdoc="{page}" style="width:100%;height:{height}px;border:1px solid #ccc"></iframe></div>'
  )


# ---- quickstart --------------------------------------------------------------------------------


def load_model_and_saes(config, workdir: str) -> tuple:
  """The language model of `config.model` (offline sources work without network) and the run's SAEs."""
  return lm.load_model(config.model), trained.load_trained_saes(config, workdir)


def ask(
  config,
  workdir: str,
  question: str,
  answer: str | None = None,
  model=None,
  saes=None,
  classifier: str = "logistic",
) -> dict:
  """The model answers `question` (or `answer` is scored), its tracks and the detector's verdict: the
  answer summary of `detect.score.score_question`, ready for `show_dashboard`."""
  out = score.score_question(config, workdir, question, answer, classifier=classifier, model=model, saes=saes)
  return {
    "model": config.model.name,
    "dataset": config_lib.question_set(config),
    "id": "your question",
    **out,
  }


# ---- SAE explorer ------------------------------------------------------------------------------


def sae_quality(config, workdir: str) -> dict:
  """Per-layer SAE quality of the train stage: {"rows", "columns"} (or {"note"} when missing)."""
  return gather.read_sae_quality(config, workdir)


def top_activating(
  config,
  workdir: str,
  layer: int,
  feature: int,
  k: int = 10,
  max_rows: int = 200_000,
  context: int = 12,
  saes=None,
  tokenizer=None,
  batch_rows: int = 8192,
) -> list[dict]:
  """The `k` stored corpus tokens on which SAE latent `feature` of block `layer` fires most, with their
  text around them (the activating token is marked ⟦…⟧). Scans the first `max_rows` store rows.
  `saes` and `tokenizer` (e.g. `model.tokenizer`) are loaded when not given."""
  p = paths.for_config(config, workdir)
  store = store_lib.ActivationStore.open(p.hidden_states)
  if layer not in store.layers:
    raise ConfigError(f"layer {layer} is not in the store (layers {store.layers})")
  saes = saes or trained.load_trained_saes(config, workdir)
  one = saes.subset([layer])  # keeps the architecture settings (e.g. b_dec subtracted before encoding)
  if not 0 <= feature < one.params["W_enc"].shape[-1]:
    raise ConfigError(f"feature {feature} out of range 0..{one.params['W_enc'].shape[-1] - 1}")
  n = min(store.n_rows, max_rows)
  best_act, best_row = np.zeros(0, np.float32), np.zeros(0, np.int64)
  store_pos = store.layers.index(layer)
  for start in range(0, n, batch_rows):
    x = store.read([store_pos], start, min(n, start + batch_rows)).astype(np.float32)
    codes = np.asarray(one.encode(x))[0, :, feature]
    best_act = np.concatenate([best_act, codes])
    best_row = np.concatenate([best_row, np.arange(start, start + len(codes))])
    keep = np.argsort(-best_act, kind="stable")[:k]
    best_act, best_row = best_act[keep], best_row[keep]
  tokenizer = tokenizer or lm.load_model(config.model).tokenizer
  rows = []
  per_window = store.rows_per_window
  for act, row in zip(best_act, best_row):
    if act <= 0:
      break
    window, position = int(row) // per_window, 1 + int(row) % per_window
    ids = store.token_windows(window, window + 1)[0]
    before, tok, after = (
      ids[max(0, position - context) : position],
      ids[position : position + 1],
      ids[position + 1 : position + 1 + context // 3],
    )
    dec = lambda t: tokenizer.decode([int(i) for i in t])  # noqa: E731
    rows.append(
      {
        "activation": float(act),
        "row": int(row),
        "window": window,
        "position": position,
        "text": f"{dec(before)}⟦{dec(tok)}⟧{dec(after)}",
      }
    )
  return rows


def feature_frequencies(config, workdir: str, layer: int, max_rows: int = 50_000, saes=None) -> np.ndarray:
  """[M] fraction of the first `max_rows` stored tokens on which each latent of block `layer` fires."""
  p = paths.for_config(config, workdir)
  store = store_lib.ActivationStore.open(p.hidden_states)
  saes = saes or trained.load_trained_saes(config, workdir)
  pos = saes.layers.index(layer)
  x = store.read([store.layers.index(layer)], 0, min(store.n_rows, max_rows)).astype(np.float32)
  codes = np.asarray(saes.encode(np.broadcast_to(x, (len(saes.layers),) + x.shape[1:])))[pos]
  return (codes > 0).mean(axis=0)


def plot_frequencies(freq: np.ndarray, title: str = ""):
  """A matplotlib histogram of log10 firing frequencies (dead latents counted apart)."""
  freq = np.asarray(freq)
  fig, ax = plt.subplots(figsize=(6, 3))
  alive = freq[freq > 0]
  ax.hist(np.log10(alive), bins=40) if alive.size else None
  ax.set_xlabel("log10 firing frequency")
  ax.set_ylabel("latents")
  ax.set_title(f"{title} ({int(np.sum(freq == 0))} of {freq.size} latents never fired)")
  return fig


# ---- detection analysis --------------------------------------------------------------------------


def load_results(config, workdir: str, dataset: str | None = None) -> dict:
  """Metrics, out-of-fold scores, detector, tracks and examples of one evaluated dataset."""
  dataset = dataset or config_lib.question_set(config)
  if not atomic_io.is_done(evaluate_stage.directory(config, workdir, dataset)):
    raise IncompleteStoreError(f"{dataset} is not evaluated in {workdir}: run the evaluate stage")
  return gather.load_dataset_results(config, workdir, dataset)


def methods_table(results: dict, kinds: tuple | None = None) -> list[dict]:
  """One row per method (AUROC with CI, AUPRC, balanced accuracy, delta vs GhostTrack), by kind."""
  rows = render.method_rows(results["metrics"])
  return [r for r in rows if kinds is None or r["kind"] in kinds]


def roc_curves(results: dict, methods: list[str] | None = None) -> dict:
  """{method: (fpr, tpr, auroc)} of the out-of-fold scores (repeat 0)."""
  sc = results["scores"]
  names = [str(n) for n in sc["methods"]]
  methods = methods or [metrics_lib.PRIMARY] + [m for m in (results["metrics"].get("best_baseline"),) if m]
  out = {}
  for m in methods:
    if m in names:
      s = sc["scores"][names.index(m)][0]
      fpr, tpr = plots.roc_points(s, sc["label"])
      out[m] = (fpr, tpr, float(stats.auroc(s, sc["label"])))
  return out


def plot_roc(results: dict, methods: list[str] | None = None):
  """A matplotlib figure of `roc_curves`."""
  fig, ax = plt.subplots(figsize=(5, 5))
  for name, (fpr, tpr, auc) in roc_curves(results, methods).items():
    ax.plot(fpr, tpr, lw=2 if name == metrics_lib.PRIMARY else 1.2, label=f"{name} ({auc:.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false-positive rate")
  ax.set_ylabel("true-positive rate (hallucinated = positive)")
  ax.set_title(f"ROC, out-of-fold: {results['dataset']}")
  ax.legend(fontsize=7, loc="lower right")
  return fig


def case_study_summaries(config, workdir: str, n_per_class: int = 2, dataset: str | None = None) -> list:
  """Answer summaries (for `show_dashboard`) of the report's case studies: correct and hallucinated
  answers with stored tracks, scored out of fold."""
  results = load_results(config, workdir, dataset)
  cases = gather.case_studies(results, n_per_class)
  return [dashboard.summary_from_outputs(config, workdir, c["id"], dataset=results["dataset"]) for c in cases]
