"""Divergence metrics of tracks (docs/method.md §4): the 26 GhostTrack metrics, the reconstruction family
(§4.1) and the degeneracy report (§4.2). Pure vectorised numpy over dense, padded track arrays.

Inputs follow `tracking.Tracks`: `birth [B, M]` (−1 = padding), `death [B, M]` (−1 = alive at the end),
`act [B, M, L]` (0 where no observation), `fid [B, M, L]` (−1 where no observation). `L` is the number
of layers that were actually tracked (the last axis of `act`); it is never assumed.
"""

from typing import Any

import numpy as np

METRIC_NAMES = (
  "entropy_mean",
  "entropy_max",
  "entropy_std",
  "entropy_final",
  "total_births",
  "total_deaths",
  "birth_rate",
  "death_rate",
  "churn_ratio",
  "survival_rate",
  "competition_mean",
  "competition_max",
  "competition_std",
  "competition_final",
  "high_competition_ratio",
  "stability_mean",
  "stability_min",
  "unstable_track_ratio",
  "dominance_mean",
  "dominance_min",
  "dominance_final",
  "weak_dominance_ratio",
  "density_mean",
  "density_max",
  "density_std",
  "max_concurrent_tracks",
)
FAMILIES = {
  "entropy": METRIC_NAMES[0:4],
  "churn": METRIC_NAMES[4:10],
  "competition": METRIC_NAMES[10:15],
  "stability": METRIC_NAMES[15:18],
  "dominance": METRIC_NAMES[18:22],
  "density": METRIC_NAMES[22:26],
}
RECONSTRUCTION_NAMES = (
  "error_mean",
  "error_std",
  "error_max",
  "error_min",
  "error_final",
  "error_growth",
  "max_error_layer",
  "error_late_ratio",
)
COMPETITION_LEVEL = 0.5  # §4 #11: activation above which an alive track "competes" (fixed constant)
HIGH_COMPETITION = 2  # §4 #15: a layer with more than this many competitors is high-competition
UNSTABLE_BELOW = 0.5  # §4 #18: stability s_t below this is unstable
WEAK_DOMINANCE_BELOW = 0.5  # §4 #22
LATE_LAYERS = 6  # §4.1 error_late_ratio: last/first 6 layers, when L >= 12
NEAR_CONSTANT_SHARE = 0.95  # §4.2: a metric is near-constant when this share of texts share a value


def alive_mask(birth: np.ndarray, death: np.ndarray, n_layers: int) -> np.ndarray:
  """[B, M, L] bool: track alive at ℓ iff birth ≤ ℓ and (alive at the end or death ≥ ℓ) (§3.3)."""
  layer = np.arange(n_layers)
  b, d = birth[..., None], death[..., None]
  return (b >= 0) & (b <= layer) & ((d < 0) | (d >= layer))


def per_layer_stats(birth, death, act) -> dict[str, np.ndarray]:
  """Per-layer quantities behind the metrics, each [B, L] (float64).

  entropy H_ℓ (bits), competition C_ℓ, dominance D_ℓ, density N_ℓ, mass Σ α.
  """
  act = np.asarray(act, np.float64)
  alive = alive_mask(np.asarray(birth), np.asarray(death), act.shape[-1])
  alpha = np.where(alive, act, 0.0)  # α_t(ℓ): 0 without an observation at ℓ
  mass = alpha.sum(axis=-2)
  safe = np.where(mass > 0, mass, 1.0)[..., None, :]
  p = alpha / safe
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
  entropy = np.where(mass > 0, -plogp.sum(axis=-2), 0.0)
  entropy = np.maximum(entropy, 0.0)  # −0.0 and rounding below 0 for a single track
  top = alpha.max(axis=-2, initial=0.0)
  dominance = np.where(top > 0, top / np.where(mass > 0, mass, 1.0), 0.0)
  competition = (alive & (alpha > COMPETITION_LEVEL)).sum(axis=-2).astype(np.float64)
  density = alive.sum(axis=-2).astype(np.float64)
  return {
    "entropy": entropy,
    "competition": competition,
    "dominance": dominance,
    "density": density,
    "mass": mass,
  }


def _stability(fid, act) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """stability_mean, _min and unstable_track_ratio over tracks with ≥ 2 observations, each [B]."""
  observed = np.asarray(fid) >= 0
  act = np.asarray(act, np.float64)
  n_obs = observed.sum(axis=-1)
  safe_n = np.maximum(n_obs, 1)
  mean = np.where(observed, act, 0.0).sum(axis=-1) / safe_n
  var = np.where(observed, (act - mean[..., None]) ** 2, 0.0).sum(axis=-1) / safe_n
  s = 1.0 / (1.0 + var)
  eligible = n_obs >= 2
  count = eligible.sum(axis=-1)
  has = count > 0
  s_mean = np.where(has, np.where(eligible, s, 0.0).sum(axis=-1) / np.maximum(count, 1), 0.0)
  s_min = np.where(has, np.where(eligible, s, np.inf).min(axis=-1, initial=np.inf), 0.0)
  unstable = np.where(has, (eligible & (s < UNSTABLE_BELOW)).sum(axis=-1) / np.maximum(count, 1), 0.0)
  return s_mean, s_min, unstable


def metrics(birth, death, act, fid, max_concurrent) -> np.ndarray:
  """The 26 metrics of docs/method.md §4, in `METRIC_NAMES` order.

  Args:
    birth, death: [..., M] int; act: [..., M, L] float; fid: [..., M, L] int (see module docstring).
    max_concurrent: [...] the tracker's max #alive (after initialisation and each update).

  Returns:
    [..., 26] float64.
  """
  birth, death, fid = np.asarray(birth), np.asarray(death), np.asarray(fid)
  n_layers = np.shape(act)[-1]
  st = per_layer_stats(birth, death, act)
  h, c, d, n = st["entropy"], st["competition"], st["dominance"], st["density"]
  is_track = birth >= 0
  births = is_track.sum(axis=-1).astype(np.float64)
  deaths = (is_track & (death >= 0)).sum(axis=-1).astype(np.float64)
  survival = np.where(births > 0, (births - deaths) / np.maximum(births, 1), 0.0)
  s_mean, s_min, unstable = _stability(fid, act)
  cols = [
    h.mean(-1),
    h.max(-1),
    h.std(-1),
    h[..., -1],
    births,
    deaths,
    births / n_layers,
    deaths / n_layers,
    (births + deaths) / (2 * n_layers),
    survival,
    c.mean(-1),
    c.max(-1),
    c.std(-1),
    c[..., -1],
    (c > HIGH_COMPETITION).sum(-1) / n_layers,
    s_mean,
    s_min,
    unstable,
    d.mean(-1),
    d.min(-1),
    d[..., -1],
    (d < WEAK_DOMINANCE_BELOW).sum(-1) / n_layers,
    n.mean(-1),
    n.max(-1),
    n.std(-1),
    np.asarray(max_concurrent, np.float64),
  ]
  return np.stack(np.broadcast_arrays(*cols), axis=-1)


def track_metrics(tracks) -> np.ndarray:
  """`metrics` of a `tracking.Tracks` batch: [B, 26]."""
  return metrics(tracks.birth, tracks.death, tracks.act, tracks.fid, tracks.max_concurrent)


def reconstruction_metrics(errors) -> np.ndarray:
  """The §4.1 family from per-layer reconstruction errors `e_ℓ`.

  Args:
    errors: [..., L] per-layer error (e.g. mean over d of (x̂ − x)², averaged over answer positions).

  Returns:
    [..., 8] float64 in `RECONSTRUCTION_NAMES` order; `max_error_layer` is the first argmax;
    `error_late_ratio` = mean(last 6) / (mean(first 6) + 1e-8) when L ≥ 12, else 1.
  """
  e = np.asarray(errors, np.float64)
  n_layers = e.shape[-1]
  if n_layers >= 2 * LATE_LAYERS:
    late = e[..., -LATE_LAYERS:].mean(-1) / (e[..., :LATE_LAYERS].mean(-1) + 1e-8)
  else:
    late = np.ones(e.shape[:-1])
  cols = [
    e.mean(-1),
    e.std(-1),
    e.max(-1),
    e.min(-1),
    e[..., -1],
    e[..., -1] - e[..., 0],
    np.argmax(e, axis=-1).astype(np.float64),
    late,
  ]
  return np.stack(cols, axis=-1)


# ------------------------------------------------------------------------------------------------
# Degeneracy (§4.2)


def column_summary(x: np.ndarray, names) -> dict[str, dict[str, Any]]:
  """Per column of x [N, F]: std, number of distinct values, modal share, constant / near-constant."""
  x = np.asarray(x, np.float64)
  out = {}
  for j, name in enumerate(names):
    col = x[:, j]
    if col.size == 0:
      out[name] = {"std": 0.0, "n_distinct": 0, "modal_share": 0.0, "constant": True, "near_constant": True}
      continue
    _, counts = np.unique(col, return_counts=True)
    modal = float(counts.max() / col.size)
    std = float(col.std())
    out[name] = {
      "std": std,
      "n_distinct": int(counts.size),
      "modal_share": modal,
      "constant": bool(std == 0.0),
      "near_constant": bool(modal >= NEAR_CONSTANT_SHARE),
    }
  return out


def constant_metrics(x: np.ndarray, names=METRIC_NAMES, near: bool = False) -> list[str]:
  """Names of the columns of x [N, F] that are constant over the dataset (or near-constant)."""
  summary = column_summary(x, names)
  key = "near_constant" if near else "constant"
  return [n for n in names if summary[n][key] or summary[n]["constant"]]


def effective_rank(x: np.ndarray, variance: float = 0.99) -> int:
  """Principal components of the standardised non-constant columns of x [N, F] needed to explain
  `variance` of the total variance (0 when every column is constant)."""
  x = np.asarray(x, np.float64)
  std = x.std(axis=0)
  keep = std > 0
  if x.shape[0] < 2 or not keep.any():
    return 0
  z = (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]
  sv = np.linalg.svd(z, compute_uv=False) ** 2
  frac = np.cumsum(sv) / sv.sum()
  return int(np.searchsorted(frac, variance - 1e-12) + 1)


def degeneracy_report(
  x: np.ndarray,
  density: np.ndarray | None = None,
  top_k: int | None = None,
  list_lengths: np.ndarray | None = None,
  names=METRIC_NAMES,
) -> dict[str, Any]:
  """The §4.2 report for one metric matrix.

  Args:
    x: [N, 26] metrics of a dataset.
    density: [N, L] alive-track counts N_ℓ (for the saturation rate), optional.
    top_k: k (saturation = N_ℓ == k).
    list_lengths: [N, L] selected-list lengths per (text, layer), optional.
    names: column names.
  """
  summary = column_summary(x, names)
  report: dict[str, Any] = {
    "n_examples": int(np.shape(x)[0]),
    "columns": summary,
    "constant": [n for n in names if summary[n]["constant"]],
    "near_constant": [n for n in names if summary[n]["near_constant"] and not summary[n]["constant"]],
    "effective_rank_99": effective_rank(x),
  }
  if density is not None and top_k is not None:
    report["saturation_rate"] = float(np.mean(np.asarray(density) == top_k)) if np.size(density) else 0.0
  if list_lengths is not None:
    ll = np.asarray(list_lengths).ravel()
    values, counts = np.unique(ll, return_counts=True)
    report["list_length"] = {
      "mean": float(ll.mean()) if ll.size else 0.0,
      "quantiles": {str(q): float(np.quantile(ll, q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)} if ll.size else {},
      "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
    }
  return report
