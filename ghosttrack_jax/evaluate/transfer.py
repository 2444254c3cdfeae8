"""Transfer across question sets: a detector fit on one set's rows, scored on another's (docs/method.md §6.6).

For every ordered pair (A, B) of question sets evaluated in one workdir (same model, same SAEs), each
method of TRANSFER_METHODS is fit on all of A's rows exactly as in a cross-validation fold (C, layer and
the rest chosen by inner CV on A only; `detect.cv.fit_with_selection`) and scores every row of B. The
cell holds B's AUROC, AUPRC and PRR with question-bootstrap intervals over B. The diagonal is the set's own
out-of-fold figure from its metrics.json. Unsupervised scores fit nothing, so their row is the same on
every column: it is there to read the trained methods against.

`results/<model>/evaluation/transfer.json` is owned here (`run` writes it, `load` reads it); the command is
`python -m ghosttrack_jax.tools.transfer`.
"""

import logging
import os

import numpy as np
import threadpoolctl

from ghosttrack_jax import stats
from ghosttrack_jax.detect import cv
from ghosttrack_jax.detect.methods import load_feature_data, plan_methods
from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.evaluate import stage as evaluate_stage
from ghosttrack_jax.runtime import atomic_io, paths

TRANSFER = "transfer.json"
TRANSFER_METHODS = (
  "ghosttrack/logistic",
  "probe/ans_last_best_layer",
  "probe/sae_pooled_all_layers",
  "probe/tbg_best_layer",
  "probe/sep_ans_last_best_layer",
  "unsupervised/semantic_entropy",
)


def path(config, workdir: str) -> str:
  return os.path.join(paths.for_config(config, workdir).evaluation, TRANSFER)


def load(config, workdir: str) -> dict | None:
  """transfer.json of this model's workdir, or None when the command has not been run."""
  p = path(config, workdir)
  return atomic_io.read_json(p) if os.path.exists(p) else None


def _compatible(a, b, name_a: str, name_b: str) -> None:
  if list(a.layers) != list(b.layers):
    raise StoreMismatchError(f"{name_a} and {name_b} were tracked on other layers ({a.layers} vs {b.layers})")
  if a.meta.get("sae_manifest_hash") != b.meta.get("sae_manifest_hash"):
    raise StoreMismatchError(
      f"{name_a} and {name_b} were tracked with other SAEs: rerun 'track' on one of them"
    )


def cell(spec, train, test, cfg) -> dict:
  """Fit `spec` on every row of `train` (FeatureData), score every row of `test`: metrics with intervals."""
  rows = np.arange(len(train.label))
  fit = cv.fit_with_selection(spec, train, rows, train.label, train.group_id, cfg, seed=cfg.seed)
  scores = cv.predict(spec, test, fit, np.arange(len(test.label)))
  w = stats.group_bootstrap_weights(test.group_id, cfg.n_bootstrap, cfg.seed) if cfg.n_bootstrap else None
  return {
    "auroc": stats.finite_or_none(stats.auroc(scores, test.label)),
    "auroc_ci": stats.percentile_ci(stats.auroc(scores, test.label, w)) if w is not None else [None, None],
    "auprc": stats.finite_or_none(stats.auprc(scores, test.label)),
    "prr": stats.finite_or_none(stats.prr(scores, test.label)),
    "prr_ci": stats.percentile_ci(stats.prr(scores, test.label, w)) if w is not None else [None, None],
    "choice": fit.choice,
    "n_train": int(len(train.label)),
    "n_test": int(len(test.label)),
  }


def run(config, workdir: str, datasets: list[str]) -> dict:
  """Writes transfer.json for `datasets` (at least two, each with a finished evaluate stage)."""
  if len(datasets) < 2:
    raise DataError(f"transfer needs two or more evaluated question sets in {workdir}; found {datasets}")
  data = {}
  for name in datasets:
    if not atomic_io.is_done(evaluate_stage.directory(config, workdir, name)):
      raise DataError(f"{name} has no finished evaluation in {workdir}: run the pipeline on it first")
    data[name] = load_feature_data(config, workdir, name)
  for name in datasets[1:]:
    _compatible(data[datasets[0]], data[name], datasets[0], name)
  out = {
    "datasets": list(datasets),
    "methods": {},
    "rule": "fit on every row of the row's set (inner CV there), scored on every row of the column's set; "
    "the diagonal is the set's own out-of-fold figure",
  }
  with threadpoolctl.threadpool_limits(limits=1):  # as the detect stage: many small fits
    for method in TRANSFER_METHODS:
      specs = {n: {m.name: m for m in plan_methods(d, config)}.get(method) for n, d in data.items()}
      if any(s is None for s in specs.values()):
        logging.info("transfer: %s is not scored on every set; skipped", method)
        continue
      cells = {}
      for a in datasets:
        cells[a] = {}
        for b in datasets:
          if a == b:
            m = evaluate_stage.load_metrics(evaluate_stage.directory(config, workdir, a))["methods"][method]
            cells[a][b] = {k: m.get(k) for k in ("auroc", "auroc_ci", "auprc", "prr", "prr_ci")}
            cells[a][b]["in_set_cross_validation"] = True
          else:
            cells[a][b] = cell(specs[a], data[a], data[b], config.evaluate)
          logging.info("transfer: %-32s %s -> %s AUROC %s", method, a, b, cells[a][b]["auroc"])
      out["methods"][method] = cells
  atomic_io.atomic_write_json(path(config, workdir), out)
  return out
