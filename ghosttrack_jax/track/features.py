"""Per-answer features from one teacher-forced pass: SAE codes, selections, tracks, metrics, baselines.

`Featurizer(model, saes, config)` runs a batch of (prompt ⊕ answer) ids through the model and the SAEs
and returns host arrays (see its docstring): the scalar baselines, per-layer reconstruction errors, the
answer-mean raw residuals, the pooled SAE codes, the top-k selections per pooling, and (phase 2, on the
host) the tracks and 26 metrics of every tracked set. The track stage and the scoring API of `detect`
both use it, so the same positions feed GhostTrack and every baseline.
"""

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import ConfigError, DataError, StoreMismatchError
from ghosttrack_jax.track import divergence, tracker

SCALAR_COLUMNS = ("answer_tokens", "answer_words", "mean_nll", "max_nll", "mean_entropy", "sum_nll")

# Residuals at single positions, the probes of the literature (docs/method.md §6.6), each [n, L, D]:
# tbg: the last prompt token, whose output predicts the first answer token ("token before generation":
# it sees the question only); ans_first / ans_last: the first and the last answer token (Orgad et al.'s
# exact answer token; for one-word answers the last one).
POSITION_SETS = ("tbg", "ans_first", "ans_last")


PER_LAYER_STATS = ("entropy", "competition", "dominance", "density")


_T_BUCKET = 32  # sequence lengths are padded up to a multiple of this (fewer recompiles)


_A_BUCKET = 8  # answer spans are padded up to a multiple of this


# ------------------------------------------------------------------------------------------------
# What to track


@dataclasses.dataclass(frozen=True)
class TrackedSet:
  """One 26-metric feature set: its name in features.npz, its kind and its tracker."""

  name: str
  kind: str  # "ghosttrack", "ablation" or "sweep"
  cfg: tracker.TrackerConfig


def tracked_sets(config) -> list[TrackedSet]:
  """The configured tracker, then (with evaluate.ablations) ablations and top-k / pooling sweeps."""
  base = tracker.TrackerConfig.from_config(config.tracking)
  out = [TrackedSet("ghosttrack", "ghosttrack", base)]
  if not config.evaluate.ablations:
    return out
  for variant in tracker.VARIANTS:
    if variant != base.association:
      out.append(TrackedSet(f"ghosttrack_{variant}", "ablation", base.variant(variant)))
  for k in dict.fromkeys(int(k) for k in config.tracking.sweep_top_k):
    if k != base.top_k:
      out.append(TrackedSet(f"ghosttrack_topk{k}", "sweep", dataclasses.replace(base, top_k=k)))
  for pooling in dict.fromkeys(str(p) for p in config.tracking.sweep_poolings):
    if pooling != base.pooling:
      out.append(
        TrackedSet(f"ghosttrack_pool_{pooling}", "sweep", dataclasses.replace(base, pooling=pooling))
      )
  return out


# ------------------------------------------------------------------------------------------------
# Device computations


def _round_up(n: int, m: int) -> int:
  return max(m, -(-n // m) * m)


@jax.jit
def _gather_answer(resid, start, valid):
  """Residuals at the answer positions: [L, B, T, D] -> [L, B, A, D] (A = valid.shape[1])."""
  pos = start[:, None] + jnp.arange(valid.shape[1])[None, :]
  pos = jnp.where(valid, pos, start[:, None])
  return jnp.take_along_axis(resid, pos[None, :, :, None], axis=2)


@jax.jit
def _answer_scalars(logits, ids, start, valid):
  """Per text: mean NLL, max NLL, mean entropy (nats), argmax mismatches and the summed NLL (minus the
  answer's log probability, maximum sequence probability's score) over the answer tokens, each read from
  the logits at the position before the token."""
  pos = start[:, None] + jnp.arange(valid.shape[1])[None, :]
  pos = jnp.where(valid, pos, start[:, None])
  pred = jnp.take_along_axis(logits, (pos - 1)[:, :, None], axis=1)  # [B, A, V]
  target = jnp.take_along_axis(ids, pos, axis=1)  # [B, A]
  logp = jax.nn.log_softmax(pred.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target[:, :, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  mismatch = jnp.argmax(pred, axis=-1) != target
  n = jnp.maximum(valid.sum(axis=1), 1)
  return jnp.stack(
    [
      jnp.where(valid, nll, 0.0).sum(1) / n,
      jnp.where(valid, nll, -jnp.inf).max(1),
      jnp.where(valid, entropy, 0.0).sum(1) / n,
      (mismatch & valid).sum(1).astype(jnp.float32),
      jnp.where(valid, nll, 0.0).sum(1),
    ],
    axis=1,
  )


@jax.jit
def _positions(resid, x_a, start, valid):
  """[B, L, D] residuals at the last prompt token, the first and the last answer token."""
  tbg = jnp.take_along_axis(resid, (start - 1)[None, :, None, None], axis=2)[:, :, 0]
  last = jnp.maximum(valid.sum(axis=1) - 1, 0)
  ans_last = jnp.take_along_axis(x_a, last[None, :, None, None], axis=2)[:, :, 0]
  return tuple(jnp.swapaxes(x, 0, 1) for x in (tbg, x_a[:, :, 0], ans_last))


@jax.jit
def _answer_mean(x, valid):
  """[L, B, A, D] -> [B, L, D] mean over the valid answer positions."""
  n = jnp.maximum(valid.sum(axis=1), 1)[None, :, None]
  mean = jnp.where(valid[None, :, :, None], x, 0.0).sum(axis=2) / n
  return jnp.swapaxes(mean, 0, 1)


@jax.jit
def _token_errors(x, x_hat, normalised):
  """Per-token reconstruction error [L, B, A]: mean over d of (x̂ − x)², or ‖x − x̂‖² / ‖x‖²."""
  sq = jnp.square(x_hat - x)
  mse = sq.mean(axis=-1)
  rel = sq.sum(axis=-1) / jnp.maximum(jnp.square(x).sum(axis=-1), 1e-12)
  return jnp.where(normalised, rel, mse)


@jax.jit
def _reduce_errors(err, valid, last_only):
  """[L, B, A] per-token errors -> [B, L]: mean over the answer positions, or the last one."""
  n = valid.sum(axis=1)
  mean = jnp.where(valid[None], err, 0.0).sum(axis=2) / jnp.maximum(n, 1)[None]
  last = jnp.take_along_axis(err, jnp.maximum(n - 1, 0)[None, :, None], axis=2)[..., 0]
  return jnp.swapaxes(jnp.where(last_only, last, mean), 0, 1)


def _pool(codes, token_mask, answer_mask, pooling):
  return tracker.pool_codes(codes, token_mask, answer_mask, pooling)


_pool_jit = jax.jit(_pool, static_argnames=("pooling",))


# ------------------------------------------------------------------------------------------------
# Batches


@dataclasses.dataclass
class Batch:
  rows: np.ndarray  # [n] example rows (a last batch is padded by repeating its first row)
  n_real: int
  ids: np.ndarray  # [B, T] int32, right-padded
  mask: np.ndarray  # [B, T] int32
  start: np.ndarray  # [B] int32 position of the first answer token
  valid: np.ndarray  # [B, A] bool: answer token j of the text exists
  n_truncated: int


def make_batch(
  examples: list[dict], rows: np.ndarray, batch_size: int, pad_id: int, max_positions: int
) -> Batch:
  """Right-padded prompt ⊕ answer ids of `rows`; prompts that would exceed the model's context are
  cut from the left (the answer is always kept whole)."""
  n_real = len(rows)
  rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - n_real)]).astype(np.int64)
  seqs, starts, lens, truncated = [], [], [], 0
  for i, r in enumerate(rows):
    ex = examples[r]
    prompt, answer = list(ex["prompt_ids"]), list(ex["answer_ids"])
    if not answer:
      raise DataError(f"example {ex.get('id')} has an empty answer; the answer stage must exclude it")
    if len(answer) >= max_positions:
      raise DataError(
        f"example {ex.get('id')}: answer of {len(answer)} tokens does not fit the "
        f"model's {max_positions} positions"
      )
    if len(prompt) + len(answer) > max_positions:
      prompt = prompt[len(prompt) + len(answer) - max_positions :]
      truncated += int(i < n_real)
    if not prompt:
      raise DataError(f"example {ex.get('id')} has an empty prompt")
    seqs.append(prompt + answer)
    starts.append(len(prompt))
    lens.append(len(answer))
  t = min(_round_up(max(len(s) for s in seqs), _T_BUCKET), max_positions)
  a = _round_up(max(lens), _A_BUCKET)
  ids = np.full((len(seqs), t), pad_id, np.int32)
  mask = np.zeros((len(seqs), t), np.int32)
  for i, s in enumerate(seqs):
    ids[i, : len(s)] = s
    mask[i, : len(s)] = 1
  valid = np.arange(a)[None, :] < np.asarray(lens)[:, None]
  return Batch(rows, n_real, ids, mask, np.asarray(starts, np.int32), valid, truncated)


class Featurizer:
  """Runs one batch through the model, the SAEs and every tracker; returns host arrays.

  Two phases: `features(batch)` (device: forward pass, SAE codes, pooling, top-k selection,
  baselines) and `track(selection)` (host: association costs, tracks, metrics). `extractor(batch)`
  runs both and returns, for the batch's real rows (n), a dict (also read by
  `detect.score.score_question`, so the keys are a contract):
    scalars [n, 5] (mean NLL, max NLL, mean entropy in nats, argmax mismatches, summed NLL), errors
    [n, L] (per-layer reconstruction error), raw_resid [n, L, D], sae_pooled [n, L, M], tbg / ans_first /
    ans_last [n, L, D] float16 (POSITION_SETS);
    sel_fid__<pooling>, sel_act__<pooling> [n, L, k], sel_n__<pooling> [n, L] (the selections);
    X__<set> [n, 26] for every `tracked_sets` entry;
    for the configured tracker: layer_{entropy,competition,dominance,density} [n, L],
    layer_list_length [n, L], n_tracks / total_deaths / max_concurrent [n] and
    trk_birth, trk_death [n, M], trk_act, trk_fid [n, M, L] (tracker.Tracks layout).

  Args:
    birth_thresholds: pooling -> birth threshold, overriding `config.tracking.birth_threshold`
      (required when `config.tracking.birth_threshold_quantile` is set: the stage calibrates them
      on the whole dataset and records them in features.json under "birth_thresholds").
  """

  def __init__(self, model, saes, config, birth_thresholds: dict[str, float] | None = None):
    self.model, self.saes, self.config = model, saes, config
    self.sets = tracked_sets(config)
    self.base = self.sets[0].cfg
    self.n_layers = int(model.n_layers)
    check_saes(model, saes)
    self.w_unit = tracker.unit_decoder(saes.params["W_dec"])
    if jax.default_backend() == "cpu":  # host cost path: keep one host copy of the unit decoder
      self.w_unit = np.asarray(jax.device_get(self.w_unit))
    self.poolings = list(dict.fromkeys(s.cfg.pooling for s in self.sets))
    self.k_max = {p: max(s.cfg.top_k for s in self.sets if s.cfg.pooling == p) for p in self.poolings}
    self.normalised = bool(config.tracking.reconstruction_normalised)
    self.last_only = self.base.pooling == "last_token"  # §4.1 parity: the last-token state
    self.birth_thresholds = dict(birth_thresholds or {})

  def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
    out = self.features(batch)
    out.update(self.track(out))
    return out

  def features(self, batch: Batch) -> dict[str, np.ndarray]:
    """Phase 1 (device): everything but the tracks, for the batch's real rows."""
    n_layers = self.n_layers
    ids, mask = jax.device_put(batch.ids), jax.device_put(batch.mask)
    start, valid = jax.device_put(batch.start), jax.device_put(batch.valid)
    logits, resid = self.model.logits_and_residuals(ids, mask)
    if resid.shape[0] != n_layers:
      raise StoreMismatchError(f"model returned {resid.shape[0]} layers, expected {n_layers}")
    b, t = batch.ids.shape
    a = batch.valid.shape[1]
    scalars = _answer_scalars(logits, ids, start, valid)
    del logits
    x_a = _gather_answer(resid, start, valid)  # [L, B, A, D]
    at_positions = dict(zip(POSITION_SETS, _positions(resid, x_a, start, valid)))
    d = x_a.shape[-1]
    codes_a = self.saes.encode(x_a.reshape(n_layers, b * a, d))
    codes_a = codes_a.reshape(n_layers, b, a, -1)
    pooled = {}
    for pooling in self.poolings:
      if pooling == "max_all":  # parity: every non-pad position, prompt included
        codes = self.saes.encode(resid.reshape(n_layers, b * t, d)).reshape(n_layers, b, t, -1)
        pooled[pooling] = _pool_jit(codes, mask.astype(bool), mask.astype(bool), pooling)
        del codes
      else:  # the answer positions are all these need (the last token is the last answer token)
        pooled[pooling] = _pool_jit(codes_a, valid, valid, pooling)
    x_hat = self.saes.decode(codes_a.reshape(n_layers, b * a, -1)).reshape(n_layers, b, a, d)
    errors = _reduce_errors(_token_errors(x_a, x_hat, self.normalised), valid, self.last_only)
    raw = _answer_mean(x_a, valid)
    del resid, x_a, x_hat, codes_a
    host = jax.device_get(
      {
        "scalars": scalars,
        "errors": errors,
        "raw": raw,
        "sae_pooled": pooled[self.base.pooling],
        **at_positions,
      }
    )
    out = {
      "scalars": np.asarray(host["scalars"], np.float64),
      "errors": np.asarray(host["errors"], np.float64),
      "raw_resid": np.asarray(host["raw"], np.float32),
      "sae_pooled": np.asarray(host["sae_pooled"], np.float32),
      **{k: np.asarray(host[k], np.float16) for k in POSITION_SETS},
    }
    for pooling in self.poolings:
      sel = tracker.select_features(pooled[pooling], self.k_max[pooling], pooling)
      out["sel_fid__" + pooling], out["sel_act__" + pooling] = sel.fid, sel.act
      out["sel_n__" + pooling] = sel.n_valid
    n = batch.n_real
    return {k: v[:n] for k, v in out.items()}

  def birth_threshold(self, pooling: str) -> float:
    if pooling in self.birth_thresholds:
      return float(self.birth_thresholds[pooling])
    if float(self.config.tracking.birth_threshold_quantile) > 0:
      raise ConfigError(
        "config.tracking.birth_threshold_quantile is set: pass the calibrated "
        "birth_thresholds (features.json 'birth_thresholds') to Featurizer"
      )
    return self.base.birth_threshold

  def tracker(self, tracked: TrackedSet) -> tracker.TrackerConfig:
    """The set's tracker with its pooling's birth threshold."""
    return dataclasses.replace(tracked.cfg, birth_threshold=self.birth_threshold(tracked.cfg.pooling))

  def track(self, selections: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Phase 2 (host): tracks and metrics of every set from phase-1 selections (any row count)."""
    out = {}
    for pooling in self.poolings:
      sel = tracker.Selection(
        selections["sel_fid__" + pooling], selections["sel_act__" + pooling], selections["sel_n__" + pooling]
      )
      group = [s for s in self.sets if s.cfg.pooling == pooling]
      costs = None
      if any(s.cfg.needs_costs for s in group):
        costs = tracker.association_costs(self.w_unit, sel, self.base)  # weights only
      for s in group:
        cfg = self.tracker(s)
        tr = tracker.track_selection(sel, costs if cfg.needs_costs else None, cfg)
        if tr.n_layers != self.n_layers:
          raise AssertionError(f"tracked {tr.n_layers} layers, the model has {self.n_layers}")
        out["X__" + s.name] = divergence.track_metrics(tr)
        if s.name == "ghosttrack":
          stats = divergence.per_layer_stats(tr.birth, tr.death, tr.act)
          for key in PER_LAYER_STATS:
            out["layer_" + key] = stats[key].astype(np.float32)
          out["layer_list_length"] = sel.head(cfg.top_k).n_valid.astype(np.int16)
          out["n_tracks"] = tr.n_tracks
          out["total_deaths"] = tr.total_deaths
          out["max_concurrent"] = tr.max_concurrent
          out["trk_birth"], out["trk_death"] = tr.birth, tr.death
          out["trk_act"], out["trk_fid"] = tr.act, tr.fid
    return out


def calibrate_birth_thresholds(
  config, sets: list[TrackedSet], selections: dict[str, np.ndarray]
) -> dict[str, float]:
  """Birth threshold per pooling: `config.tracking.birth_threshold`, or with
  `birth_threshold_quantile` q in (0, 1) the q-quantile of the positive pooled activations in the
  selected lists (configured top_k; every example and layer; labels are never read)."""
  q = float(config.tracking.birth_threshold_quantile)
  base = sets[0].cfg
  out = {}
  for pooling in dict.fromkeys(s.cfg.pooling for s in sets):
    if q <= 0:
      out[pooling] = float(base.birth_threshold)
      continue
    act = selections["sel_act__" + pooling][..., : base.top_k]
    pos = act[act > 0]
    out[pooling] = float(np.quantile(pos, q)) if pos.size else float(base.birth_threshold)
  return out


def check_saes(model, saes) -> None:
  """The SAEs must be one per tracked model layer, for this model's width."""
  layers = [int(l) for l in getattr(saes, "layers", range(saes.params["W_dec"].shape[0]))]
  if layers != [int(l) for l in model.layers]:
    raise StoreMismatchError(
      f"SAEs cover layers {layers}, the model tracks {list(model.layers)}: "
      "train SAEs for config.model.layers (stage 'train')"
    )
  shape = tuple(saes.params["W_dec"].shape)
  if shape[0] != model.n_layers or shape[2] != model.d_model:
    raise StoreMismatchError(
      f"SAE decoders have shape {shape}; the model needs [{model.n_layers}, M, {model.d_model}]"
    )


def hash_json(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sae_fingerprint(saes) -> str:
  """The SAEs' manifest hash when they carry one, else a hash of arch, layers, scale and decoders."""
  for attr in ("manifest_hash", "manifest"):
    value = getattr(saes, attr, None)
    if value:
      return value if isinstance(value, str) else hash_json(value)
  h = hashlib.sha256()
  h.update(json.dumps([str(getattr(saes, "arch", "")), [int(l) for l in saes.layers]]).encode())
  h.update(np.asarray(jax.device_get(saes.input_scale), np.float32).tobytes())
  h.update(np.asarray(jax.device_get(saes.params["W_dec"]), np.float32).tobytes())
  return h.hexdigest()[:16]
