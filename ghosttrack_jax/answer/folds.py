"""Question-grouped, stratified K-fold assignment: the one fold file every method reads.

Stratified group K-fold (K = `config.evaluate.n_folds`, shuffled, seed `config.evaluate.seed + r`; our own
greedy assignment, see `stratified_group_kfold`, because scikit-learn's shuffled `StratifiedGroupKFold`
stratifies poorly), groups = normalised question text, R = `config.evaluate.n_repeats` repeats. When a
class has fewer groups than folds, the fold info says the folds are not stratified and a warning is logged.
"""

import logging

import numpy as np

from ghosttrack_jax.answer import labelling
from ghosttrack_jax.errors import DataError


def stratified_group_kfold(labels, groups, n_folds: int, seed: int) -> np.ndarray:
  """Shuffled, stratified, grouped K-fold: fold index per row.

  scikit-learn's `StratifiedGroupKFold(shuffle=True)` stratifies poorly (at prevalence 0.2 with one
  row per group we measured 12-24 positives per fold of 80 rows), so groups are assigned greedily:
  groups are shuffled with `seed`, ordered by size (largest first, stable), and each goes to the fold
  that minimises the squared deviation of the per-class counts from their ideal share, ties broken by
  fold size and then by a seeded random fold order.
  """
  labels = np.asarray(labels).astype(int)
  uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
  counts = np.zeros((len(uniq), 2), np.int64)
  np.add.at(counts, (inv, labels), 1)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(uniq))
  order = order[np.argsort(-counts[order].sum(1), kind="stable")]
  ideal = counts.sum(0) / n_folds
  fold_counts = np.zeros((n_folds, 2))
  tiebreak = rng.permutation(n_folds)
  group_fold = np.empty(len(uniq), np.int64)
  for g in order:
    cand = fold_counts + counts[g]
    cost = ((cand - ideal) ** 2).sum(1) - ((fold_counts - ideal) ** 2).sum(1)
    key = np.lexsort((tiebreak, fold_counts.sum(1), np.round(cost, 9)))
    f = key[0]
    group_fold[g] = f
    fold_counts[f] += counts[g]
  return group_fold[inv]


def assign_folds(labels, groups, n_folds: int, n_repeats: int = 1, seed: int = 0):
  """Returns (folds [R, N] int16, info). Question groups never cross folds; stratified when possible."""
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  n_groups = len(np.unique(groups))
  if n_groups < n_folds:
    raise DataError(
      f"{n_groups} question groups cannot fill {n_folds} folds; answer more questions or "
      "lower config.evaluate.n_folds"
    )
  per_class_groups = [len(np.unique(groups[labels == c])) for c in (0, 1)]
  stratified = min(per_class_groups) >= n_folds
  if not stratified:
    logging.warning(
      "class sizes in groups %s < n_folds=%d: folds cannot hold both classes each; "
      "detection metrics will be undefined or meaningless",
      per_class_groups,
      n_folds,
    )
  folds = np.stack(
    [stratified_group_kfold(labels, groups, n_folds, seed + r) for r in range(n_repeats)]
  ).astype(np.int16)
  sizes = [np.bincount(f, minlength=n_folds) for f in folds]
  if min(s.min() for s in sizes) == 0:
    raise DataError(f"an empty fold: {n_groups} groups are too unevenly sized for {n_folds} folds")
  return folds, {
    "method": "greedy stratified group k-fold (answer.folds.stratified_group_kfold)",
    "stratified": bool(stratified),
    "n_folds": n_folds,
    "n_repeats": n_repeats,
    "seeds": [seed + r for r in range(n_repeats)],
    "class_groups": per_class_groups,
  }


def group_ids(questions) -> np.ndarray:
  """Same normalised question text -> same group id (ids in first-seen order)."""
  seen: dict[str, int] = {}
  return np.array(
    [seen.setdefault(labelling.normalize_answer(q) or q, len(seen)) for q in questions], np.int64
  )
