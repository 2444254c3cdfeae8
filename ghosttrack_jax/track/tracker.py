"""Per-text tracking of SAE features across layers (docs/method.md §3): selection, association, lifecycle.

The layer index is the "time" axis. For every text and layer the SAE code is pooled to one vector
`a_ℓ` (§3.1), up to k features are selected from it, and the features are linked across layers into
tracks by a strict "solve, then reject" Hungarian assignment (§3.4–3.5) or an ablation variant (§3.6).

What runs where:
  * pooling, top-k and every association cost are array programs (`pool_codes`, `select_features`,
    `association_costs`). An alive track at layer ℓ−1 always holds one of layer ℓ−1's selected
    features, so the cost of continuing it with feature j of layer ℓ depends only on the pair of list
    entries: all costs of all layers and texts come from ONE batched matmul of unit decoder rows,
    `[B, L−1, k, D] × [B, L−1, D, k]`.
  * `track_selection` is the only host loop: per text, per layer it picks the rows of the alive
    tracks out of the precomputed cost block and solves one ≤ k×k assignment (scipy).

Conventions (shared with `divergence.py` and the `tracks.npz` schema of DESIGN.md):
  * rows of an assignment problem are the alive tracks in creation order (track id ascending);
    columns are the layer's selected features in list order (descending activation, ties → lower
    feature id). This fixes scipy's tie-breaking;
  * a text's tracks are `birth[M]`, `death[M]` (`NO_DEATH` = −1 while alive), `act[M, L]` (0 where the
    track has no observation) and `fid[M, L]` (−1 where absent); batches pad M with `birth = −1`.
  * activations are in the units of the codes given (scaled-input units for `saes.encode`).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError

# The value sets live in config_lib (validated there before any stage runs); re-exported for callers.
POOLINGS = config_lib.POOLINGS
ASSOCIATIONS = config_lib.ASSOCIATIONS
# Ablation variants of §3.6: an association rule, or `single_hypothesis` (= hungarian with top_k 1).
VARIANTS = ASSOCIATIONS + ("single_hypothesis",)
NO_DEATH = -1  # death layer of a track that is alive at the last layer
_ACT_EPS = 1e-6  # §3.4: the activation cost uses the ratio only when the track's activation > this
_ACT_NEW = 0.1  # §3.4: with a ~zero track activation, a candidate above this costs 1


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
  """Tracker settings; activations are in the SAE code units. No defaults here: build it with
  `from_config(config.tracking)`, whose defaults are config_lib.base_config's (docs/method.md §3.3)."""

  top_k: int  # features kept per layer per text
  pooling: str  # one of POOLINGS
  association: str  # one of ASSOCIATIONS
  birth_threshold: float  # a feature with pooled activation > this may start a track
  association_threshold: float  # assigned pairs with cost >= this are rejected
  w_sem: float  # weight of 1 - cos(decoder rows)
  w_act: float  # weight of the activation-ratio cost
  w_pos: float  # weight of the position cost, which is always 0 (kept for parity)

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ConfigError(f"tracking pooling={self.pooling!r}: use one of {POOLINGS}")
    if self.association not in ASSOCIATIONS:
      raise ConfigError(f"tracking association={self.association!r}: use one of {ASSOCIATIONS}")
    if self.top_k < 1:
      raise ConfigError(f"tracking top_k={self.top_k}: must be >= 1")

  @classmethod
  def from_config(cls, tracking_cfg: Any = None, **overrides) -> "TrackerConfig":
    """The tracker settings of `config.tracking` (None: base_config's), with `overrides` (field=value)."""
    t = config_lib.base_config().tracking if tracking_cfg is None else tracking_cfg
    cfg = cls(
      top_k=int(t.top_k),
      pooling=str(t.pooling),
      association=str(t.association),
      birth_threshold=float(t.birth_threshold),
      association_threshold=float(t.association_threshold),
      w_sem=float(t.w_sem),
      w_act=float(t.w_act),
      w_pos=float(t.w_pos),
    )
    return dataclasses.replace(cfg, **overrides)

  def variant(self, name: str) -> "TrackerConfig":
    """This config with the §3.6 ablation `name` applied (`hungarian` = the default rule)."""
    if name == "single_hypothesis":
      return dataclasses.replace(self, top_k=1, association="hungarian")
    if name not in ASSOCIATIONS:
      raise ConfigError(f"tracking variant {name!r}: use one of {VARIANTS}")
    return dataclasses.replace(self, association=name)

  @property
  def needs_costs(self) -> bool:
    return self.association in ("hungarian", "greedy")


@dataclasses.dataclass
class Selection:
  """Per-text, per-layer feature lists (host numpy). Selected entries form a prefix of each list.

  fid: [B, L, k] int32 feature ids, −1 past the list end.
  act: [B, L, k] float32 pooled activations, 0 past the list end.
  n_valid: [B, L] int32 list lengths.
  """

  fid: np.ndarray
  act: np.ndarray
  n_valid: np.ndarray

  def head(self, k: int) -> "Selection":
    """The first k entries of every list: the selection a smaller top_k would have made."""
    return Selection(self.fid[..., :k], self.act[..., :k], np.minimum(self.n_valid, k))

  def take(self, idx) -> "Selection":
    return Selection(self.fid[idx], self.act[idx], self.n_valid[idx])


@dataclasses.dataclass
class Tracks:
  """Tracks of a batch of texts, padded over the track axis (see module docstring).

  birth, death: [B, M] int32; act: [B, M, L] float32; fid: [B, M, L] int32; n_tracks,
  total_births, total_deaths, max_concurrent: [B] int32 tracker counters.
  """

  birth: np.ndarray
  death: np.ndarray
  act: np.ndarray
  fid: np.ndarray
  n_tracks: np.ndarray
  total_births: np.ndarray
  total_deaths: np.ndarray
  max_concurrent: np.ndarray

  @property
  def n_layers(self) -> int:
    return self.act.shape[-1]

  def text(self, i: int) -> dict[str, np.ndarray]:
    """Text i's arrays, trimmed to its own tracks."""
    m = int(self.n_tracks[i])
    return {
      "birth": self.birth[i, :m],
      "death": self.death[i, :m],
      "act": self.act[i, :m],
      "fid": self.fid[i, :m],
    }


# ------------------------------------------------------------------------------------------------
# Pooling and selection (device)


def pool_codes(codes, token_mask, answer_mask, pooling: str):
  """Reduces each text's SAE codes at each layer to one vector `a_ℓ` (docs/method.md §3.1).

  Args:
    codes: [L, B, T, h] SAE codes.
    token_mask: [B, T] bool, true at non-pad positions.
    answer_mask: [B, T] bool, true at the answer positions (inputs of the answer tokens).
    pooling: one of POOLINGS.

  Returns:
    [B, L, h] float32 pooled codes. A text without answer (or non-pad) positions pools to 0.
  """
  codes = _on_device(codes).astype(jnp.float32)
  token_mask = _on_device(token_mask).astype(bool)
  answer_mask = _on_device(answer_mask).astype(bool) & token_mask
  if pooling == "max_all":  # pads zeroed first, then max over every position
    pooled = jnp.max(jnp.where(token_mask[None, :, :, None], codes, 0.0), axis=2)
  elif pooling == "last_token":
    t = jnp.asarray(token_mask.shape[1] - 1 - jnp.argmax(token_mask[:, ::-1], axis=1))
    pooled = jnp.take_along_axis(codes, t[None, :, None, None], axis=2)[:, :, 0]
    pooled = jnp.where(token_mask.any(axis=1)[None, :, None], pooled, 0.0)
  elif pooling == "answer_max":
    m = answer_mask[None, :, :, None]
    pooled = jnp.max(jnp.where(m, codes, -jnp.inf), axis=2)
    pooled = jnp.where(answer_mask.any(axis=1)[None, :, None], pooled, 0.0)
  elif pooling == "answer_mean":
    m = answer_mask[None, :, :, None]
    n = jnp.maximum(answer_mask.sum(axis=1), 1)[None, :, None]
    pooled = jnp.sum(jnp.where(m, codes, 0.0), axis=2) / n
  else:
    raise ConfigError(f"tracking pooling={pooling!r}: use one of {POOLINGS}")
  return jnp.swapaxes(pooled, 0, 1)


@functools.partial(jax.jit, static_argnames=("k", "zeros_allowed"))
def _select(pooled, k: int, zeros_allowed: bool):
  act, fid = jax.lax.top_k(pooled, k)  # ties: lower index first (XLA TopK is stable)
  valid = jnp.ones_like(act, bool) if zeros_allowed else act > 0
  # Descending order makes "positive" a prefix: stopping at the first non-positive value is the same.
  return (
    jnp.where(valid, fid, -1).astype(jnp.int32),
    jnp.where(valid, act, 0.0),
    valid.sum(axis=-1).astype(jnp.int32),
  )


def select_features(pooled, top_k: int, pooling: str) -> Selection:
  """Top-k features of every pooled vector (§3.1), copied to host.

  `max_all` (parity) keeps the k largest entries with zeros allowed; every other pooling keeps the
  strictly positive entries, in descending order, at most k. Ties go to the lower feature id.

  Args:
    pooled: [B, L, h] pooled codes.
    top_k: k; lists are `min(k, h)` long.
    pooling: the pooling that produced `pooled` (decides the zeros rule).
  """
  pooled = _on_device(pooled).astype(jnp.float32)
  k = min(int(top_k), pooled.shape[-1])
  fid, act, n = jax.device_get(_select(pooled, k, pooling == "max_all"))
  return Selection(np.asarray(fid), np.asarray(act, np.float32), np.asarray(n))


def _on_device(x):
  """Explicit host -> device copy (works under jax_transfer_guard='disallow')."""
  return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)


def unit_decoder(w_dec):
  """[L, h, D] decoder rows scaled to unit norm; a zero row stays zero (its cosine is then 0)."""
  w_dec = _on_device(w_dec).astype(jnp.float32)
  norm = jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
  return jnp.where(norm > 0, w_dec / jnp.where(norm > 0, norm, 1.0), 0.0)


def _cost_formula(xp, cos, act, w_sem, w_act):
  """§3.4 cost from cosines [B, L−1, k, k] and list activations [B, L, k] (xp = numpy or jax.numpy)."""
  sem = 1.0 - xp.clip(cos, -1.0, 1.0)
  a = act[:, :-1, :, None]  # the alive track's latest activation (entry p of layer ℓ−1)
  b = act[:, 1:, None, :]  # candidate j of layer ℓ
  ratio = xp.abs(a - b) / xp.where(a + b > 0, a + b, 1.0)
  c_act = xp.where(a > _ACT_EPS, ratio, xp.where(b > _ACT_NEW, 1.0, 0.0))
  return (w_sem * sem + w_act * c_act).astype(xp.float32)  # + w_pos * 0: position cost is 0 (§3.3)


@jax.jit
def _costs_jax(w_unit, fid, act, w_sem, w_act):
  layer = jnp.arange(w_unit.shape[0])[None, :, None]
  emb = w_unit[layer, jnp.maximum(fid, 0)]  # [B, L, k, D]: this layer's decoder row per list entry
  cos = jnp.einsum("blpd,blqd->blpq", emb[:, :-1], emb[:, 1:], precision=jax.lax.Precision.HIGHEST)
  return _cost_formula(jnp, cos, act, w_sem, w_act)


def _costs_numpy(w_unit, fid, act, w_sem, w_act):
  """`_costs_jax` on host. The same batched matmul, streamed one layer pair at a time so that its
  operands stay in cache (about 1.5x faster on CPU than materialising [B, L, k, D] first)."""
  n_texts, n_layers, k = fid.shape
  fid = np.maximum(fid, 0)
  w_sem, w_act = np.float32(w_sem), np.float32(w_act)
  cost = np.empty((n_texts, n_layers - 1, k, k), np.float32)
  prev = w_unit[0][fid[:, 0]]  # [B, k, D]: layer 0's decoder row per list entry
  for layer in range(1, n_layers):
    cur = w_unit[layer][fid[:, layer]]
    c = cost[:, layer - 1]
    np.matmul(prev, np.swapaxes(cur, -1, -2), out=c)  # cosines of unit rows
    np.clip(c, -1.0, 1.0, out=c)
    c *= -w_sem
    c += w_sem  # w_sem * (1 − cos)
    a = act[:, layer - 1, :, None]
    b = act[:, layer, None, :]
    total = a + b
    c_act = np.abs(a - b)
    np.divide(c_act, total, out=c_act, where=total > 0)
    tiny = np.nonzero(act[:, layer - 1] <= _ACT_EPS)  # track activation ~0: rare
    if tiny[0].size:
      c_act[tiny] = act[tiny[0], layer] > _ACT_NEW
    c_act *= w_act
    c += c_act
    prev = cur
  return cost


def association_costs(w_unit, sel: Selection, cfg: TrackerConfig, backend: str | None = None) -> np.ndarray:
  """All association costs of a batch (§3.4), from one batched matmul, copied to host.

  Args:
    w_unit: [L, h, D] unit decoder rows (`unit_decoder`), layer ℓ's SAE at index ℓ: a jax array
      (device) or a numpy array (host).
    sel: the batch's selection, [B, L, k].
    cfg: weights.
    backend: "jax" (jitted, on w_unit's device) or "numpy" (host BLAS). Default: numpy when w_unit
      is a numpy array or JAX runs on CPU, where XLA's batched small matmuls are several times
      slower than numpy's; jax otherwise. Both evaluate the same formula in float32 (they agree to
      float32 rounding; tests/track/test_tracker.py checks it).

  Returns:
    [B, L−1, k', k'] float32 with k' = the batch's longest list: entry [b, ℓ−1, p, j] is the cost of
    continuing a track whose latest observation is list entry p of layer ℓ−1 with list entry j of
    layer ℓ. Entries past a list's end are meaningless and never read.
  """
  n_texts, n_layers, _ = sel.fid.shape
  if w_unit.shape[0] != n_layers:
    raise ValueError(f"decoder has {w_unit.shape[0]} layers, selection {n_layers}")
  k = max(int(sel.n_valid.max(initial=0)), 1)  # trim the all-padding tail of the lists
  if n_layers < 2:
    return np.zeros((n_texts, 0, k, k), np.float32)
  fid, act = sel.fid[..., :k], sel.act[..., :k]
  if backend is None:
    backend = "numpy" if isinstance(w_unit, np.ndarray) or jax.default_backend() == "cpu" else "jax"
  if backend == "numpy":
    w_host = w_unit if isinstance(w_unit, np.ndarray) else jax.device_get(w_unit)
    return _costs_numpy(np.asarray(w_host, np.float32), fid, act, cfg.w_sem, cfg.w_act)
  out = _costs_jax(
    _on_device(w_unit),
    jax.device_put(np.ascontiguousarray(fid)),
    jax.device_put(np.ascontiguousarray(act)),
    float(cfg.w_sem),
    float(cfg.w_act),
  )
  return np.asarray(jax.device_get(out))


# ------------------------------------------------------------------------------------------------
# Assignment (host)


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Minimum-cost rectangular assignment, `scipy.optimize.linear_sum_assignment` semantics.

  Returns (rows, cols) with rows ascending, `min(cost.shape)` pairs.
  """
  return optimize.linear_sum_assignment(cost)


def assign(cost: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """Hungarian, then reject (§3.5): solve the full problem, keep only pairs with cost < threshold.

  A rejected pair leaves both its row and column unmatched (no re-solve).
  """
  rows, cols = hungarian(cost)
  keep = cost[rows, cols] < threshold
  return rows[keep], cols[keep]


def assign_greedy(
  cost: np.ndarray, latest_act: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
  """Greedy association (§3.6): tracks by latest activation, descending (ties: creation order);
  each takes the remaining column of lowest cost (ties: lower column), kept if cost < threshold.
  A track whose best remaining cost is too high stays unmatched and takes nothing.

  Returns (rows, cols), rows ascending.
  """
  n_rows, n_cols = cost.shape
  free = np.ones(n_cols, bool)
  rows, cols = [], []
  for r in np.argsort(-latest_act, kind="stable"):
    if not free.any():
      break
    row = np.where(free, cost[r], np.inf)
    j = int(np.argmin(row))
    if row[j] < threshold:
      free[j] = False
      rows.append(r)
      cols.append(j)
  rows, cols = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
  order = np.argsort(rows)
  return rows[order], cols[order]


def assign_feature_id(prev_fid: np.ndarray, cur_fid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Feature-id association (§3.6 null baseline): a track continues iff its latest feature id is in
  the current list (ids within a list are unique, so the match is unique)."""
  eq = prev_fid[:, None] == cur_fid[None, :]
  rows = np.flatnonzero(eq.any(axis=1))
  return rows, np.argmax(eq[rows], axis=1)


# ------------------------------------------------------------------------------------------------
# Lifecycle (host)

_EMPTY = np.zeros(0, np.intp)


def _track_text(
  fid: np.ndarray, act: np.ndarray, n_valid: np.ndarray, cost: np.ndarray | None, cfg: TrackerConfig
) -> dict[str, Any]:
  """Runs the §3.3 lifecycle for one text. fid/act [L, k], n_valid [L], cost [L−1, k', k'] or None.

  Kept lean on purpose (a handful of numpy calls per layer): this is the only per-text host loop.
  """
  n_layers = fid.shape[0]
  nv = n_valid.tolist()
  strong = act > cfg.birth_threshold  # [L, k]: may start a track
  # Layer 0: every selected feature above the birth threshold starts a track.
  alive_cols = np.flatnonzero(strong[0, : nv[0]])
  alive_ids = np.arange(alive_cols.size)
  n_born = [alive_cols.size]  # births per layer; ids are given in creation order
  dead_ids, n_dead = [], []  # per layer ℓ ≥ 1: the ids that died at ℓ − 1
  obs_ids, obs_cols = [alive_ids], [alive_cols]  # per layer: alive tracks and their list entries
  next_id = alive_cols.size
  max_concurrent = alive_cols.size
  rule = cfg.association
  for layer in range(1, n_layers):
    n = nv[layer]
    na = alive_ids.size
    if na and n and rule != "no_association":
      if rule == "hungarian":
        rows, cols = assign(cost[layer - 1][alive_cols, :n], cfg.association_threshold)
      elif rule == "greedy":
        rows, cols = assign_greedy(
          cost[layer - 1][alive_cols, :n], act[layer - 1, alive_cols], cfg.association_threshold
        )
      else:  # feature_id
        rows, cols = assign_feature_id(fid[layer - 1, alive_cols], fid[layer, :n])
    else:
      rows, cols = _EMPTY, _EMPTY
    if rows.size < na:  # unmatched alive tracks die at the previous layer
      unmatched = np.ones(na, bool)
      unmatched[rows] = False
      dead_ids.append(alive_ids[unmatched])
      n_dead.append(na - rows.size)
    else:
      n_dead.append(0)
    free = strong[layer, :n].copy()
    free[cols] = False
    new_cols = np.flatnonzero(free)
    n_born.append(new_cols.size)
    # rows are ascending, so matched tracks keep creation order; newborns follow in list order.
    alive_ids = np.concatenate((alive_ids[rows], np.arange(next_id, next_id + new_cols.size)))
    alive_cols = np.concatenate((cols, new_cols))
    next_id += new_cols.size
    obs_ids.append(alive_ids)
    obs_cols.append(alive_cols)
    max_concurrent = max(max_concurrent, alive_ids.size)
  layers = np.arange(n_layers)
  death = np.full(next_id, NO_DEATH, np.int32)
  if dead_ids:
    death[np.concatenate(dead_ids)] = np.repeat(layers[:-1], n_dead)
  return {
    "birth": np.repeat(layers, n_born).astype(np.int32),
    "death": death,
    "obs_ids": np.concatenate(obs_ids),
    "obs_layer": np.repeat(layers, [o.size for o in obs_ids]),
    "obs_cols": np.concatenate(obs_cols).astype(np.intp),
    "max_concurrent": max_concurrent,
    "n_deaths": int(sum(n_dead)),
  }


def track_selection(
  sel: Selection, costs: np.ndarray | None, cfg: TrackerConfig, pad_to: int | None = None
) -> Tracks:
  """Links each text's selected features into tracks (§3.3–3.6).

  Args:
    sel: [B, L, k] selection (its k may exceed cfg.top_k: only the first cfg.top_k entries are used).
    costs: [B, L−1, k', k'] from `association_costs` with k' >= the k used (None for the
      feature_id and no_association rules, which need no costs).
    cfg: tracker settings.
    pad_to: track-axis length M of the output (default: the batch's largest track count).
  """
  if sel.fid.shape[-1] > cfg.top_k:
    sel = sel.head(cfg.top_k)
  if cfg.needs_costs and costs is None and sel.fid.shape[1] > 1:
    raise ValueError(f"association {cfg.association!r} needs association costs")
  n_texts, n_layers, _ = sel.fid.shape
  per_text = [
    _track_text(sel.fid[b], sel.act[b], sel.n_valid[b], None if costs is None else costs[b], cfg)
    for b in range(n_texts)
  ]
  n_tracks = np.array([t["birth"].size for t in per_text], np.int32)
  m = int(n_tracks.max(initial=0)) if pad_to is None else int(pad_to)
  if n_tracks.size and n_tracks.max() > m:
    raise ValueError(f"pad_to={m} is below the largest track count {n_tracks.max()}")
  birth = np.full((n_texts, m), -1, np.int32)
  death = np.full((n_texts, m), NO_DEATH, np.int32)
  act = np.zeros((n_texts, m, n_layers), np.float32)
  fid = np.full((n_texts, m, n_layers), -1, np.int32)
  for b, t in enumerate(per_text):
    birth[b, : n_tracks[b]] = t["birth"]
    death[b, : n_tracks[b]] = t["death"]
    act[b, t["obs_ids"], t["obs_layer"]] = sel.act[b, t["obs_layer"], t["obs_cols"]]
    fid[b, t["obs_ids"], t["obs_layer"]] = sel.fid[b, t["obs_layer"], t["obs_cols"]]
  return Tracks(
    birth=birth,
    death=death,
    act=act,
    fid=fid,
    n_tracks=n_tracks,
    total_births=n_tracks.copy(),
    total_deaths=np.array([t["n_deaths"] for t in per_text], np.int32),
    max_concurrent=np.array([t["max_concurrent"] for t in per_text], np.int32),
  )


def track_pooled(pooled, w_unit, cfg: TrackerConfig) -> tuple[Selection, Tracks]:
  """Selection + costs + lifecycle for pooled codes [B, L, h] and unit decoder rows [L, h, D]."""
  sel = select_features(pooled, cfg.top_k, cfg.pooling)
  costs = association_costs(w_unit, sel, cfg) if cfg.needs_costs else None
  return sel, track_selection(sel, costs, cfg)
