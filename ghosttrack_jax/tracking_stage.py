"""Stage `track`: GhostTrack metrics and every baseline feature from one teacher-forced pass per batch.

For each answered, labelled example of the `answer` stage (`cache/<model>/answers/<dataset>/`), one
forward pass over `prompt_ids ⊕ answer_ids` gives all L layers' raw residuals and the logits
(method.md §6.2 step 5). From that pass, at the answer positions (the inputs of the answer tokens):

  * GhostTrack: SAE codes (scaled-input units, `saes.encode`) pooled per layer → top-k → tracks → the
    26 metrics (`tracking`, `divergence`), for the configured tracker and, with
    `config.evaluate.ablations`, for every ablation variant (§3.6) and the top-k / pooling sweeps;
  * the reconstruction family (§4.1) from `saes.decode`;
  * baselines (§6.3): answer length in tokens and words, mean / max token NLL and mean predictive
    entropy (nats) from the logits at the position before each answer token, the answer-mean raw
    residual per layer (linear probes) and the pooled SAE code per layer (SAE-feature probe);
  * a diagnostic: answer positions whose argmax differs from the answer token.

The number of layers is the model's (`model.n_layers`, i.e. `config.model.layers` or every block);
the SAEs must cover exactly those layers. Outputs, under `results/<model>/tracking/<dataset>/` (schema
in docs/DESIGN.md "Feature tables"): `features.npz` + `features.json`, `summaries.npz` (per-example,
per-layer track statistics for dashboards), `tracks.npz` (full tracks of a subset, for case studies),
`degeneracy.json` (§4.2) and `DONE` last. Batches finished by an interrupted run are kept under
`partial/` and reused when the inputs are unchanged.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax import answers
from ghosttrack_jax import divergence
from ghosttrack_jax import io_utils
from ghosttrack_jax import paths
from ghosttrack_jax import tracking
from ghosttrack_jax.errors import ConfigError, DataError, StoreMismatchError

SCHEMA_VERSION = 1  # of features.json (DESIGN.md); detect checks it
SCALAR_COLUMNS = ("answer_tokens", "answer_words", "mean_nll", "max_nll", "mean_entropy")
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
  cfg: tracking.TrackerConfig


def tracked_sets(config) -> list[TrackedSet]:
  """The configured tracker, then (with evaluate.ablations) ablations and top-k / pooling sweeps."""
  base = tracking.TrackerConfig.from_config(config.tracking)
  out = [TrackedSet("ghosttrack", "ghosttrack", base)]
  if not config.evaluate.ablations:
    return out
  for variant in tracking.VARIANTS:
    if variant != base.association:
      out.append(TrackedSet(f"ghosttrack_{variant}", "ablation", base.variant(variant)))
  for k in dict.fromkeys(int(k) for k in config.tracking.sweep_top_k):
    if k != base.top_k:
      out.append(TrackedSet(f"ghosttrack_topk{k}", "sweep", dataclasses.replace(base, top_k=k)))
  for pooling in dict.fromkeys(str(p) for p in config.tracking.sweep_poolings):
    if pooling != base.pooling:
      out.append(TrackedSet(f"ghosttrack_pool_{pooling}", "sweep",
                            dataclasses.replace(base, pooling=pooling)))
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
  """Per text: mean NLL, max NLL, mean entropy (nats) and argmax mismatches over the answer tokens,
  each read from the logits at the position before the token."""
  pos = start[:, None] + jnp.arange(valid.shape[1])[None, :]
  pos = jnp.where(valid, pos, start[:, None])
  pred = jnp.take_along_axis(logits, (pos - 1)[:, :, None], axis=1)  # [B, A, V]
  target = jnp.take_along_axis(ids, pos, axis=1)  # [B, A]
  logp = jax.nn.log_softmax(pred.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target[:, :, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  mismatch = jnp.argmax(pred, axis=-1) != target
  n = jnp.maximum(valid.sum(axis=1), 1)
  return jnp.stack([
      jnp.where(valid, nll, 0.0).sum(1) / n,
      jnp.where(valid, nll, -jnp.inf).max(1),
      jnp.where(valid, entropy, 0.0).sum(1) / n,
      (mismatch & valid).sum(1).astype(jnp.float32),
  ], axis=1)


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
  return tracking.pool_codes(codes, token_mask, answer_mask, pooling)


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


def make_batch(examples: list[dict], rows: np.ndarray, batch_size: int, pad_id: int,
               max_positions: int) -> Batch:
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
      raise DataError(f"example {ex.get('id')}: answer of {len(answer)} tokens does not fit the "
                      f"model's {max_positions} positions")
    if len(prompt) + len(answer) > max_positions:
      prompt = prompt[len(prompt) + len(answer) - max_positions:]
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
    ids[i, :len(s)] = s
    mask[i, :len(s)] = 1
  valid = np.arange(a)[None, :] < np.asarray(lens)[:, None]
  return Batch(rows, n_real, ids, mask, np.asarray(starts, np.int32), valid, truncated)


class Extractor:
  """Runs one batch through the model, the SAEs and every tracker; returns host arrays.

  Two phases: `features(batch)` (device: forward pass, SAE codes, pooling, top-k selection,
  baselines) and `track(selection)` (host: association costs, tracks, metrics). `extractor(batch)`
  runs both and returns, for the batch's real rows (n), a dict (also read by
  `detect.score_question`, so the keys are a contract):
    scalars [n, 4] (mean NLL, max NLL, mean entropy in nats, argmax mismatches), errors [n, L]
    (per-layer reconstruction error), raw_resid [n, L, D], sae_pooled [n, L, M];
    sel_fid__<pooling>, sel_act__<pooling> [n, L, k], sel_n__<pooling> [n, L] (the selections);
    X__<set> [n, 26] for every `tracked_sets` entry;
    for the configured tracker: layer_{entropy,competition,dominance,density} [n, L],
    layer_list_length [n, L], n_tracks / total_deaths / max_concurrent [n] and
    trk_birth, trk_death [n, M], trk_act, trk_fid [n, M, L] (tracking.Tracks layout).

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
    self.w_unit = tracking.unit_decoder(saes.params["W_dec"])
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
    host = jax.device_get({"scalars": scalars, "errors": errors, "raw": raw,
                           "sae_pooled": pooled[self.base.pooling]})
    out = {
        "scalars": np.asarray(host["scalars"], np.float64),
        "errors": np.asarray(host["errors"], np.float64),
        "raw_resid": np.asarray(host["raw"], np.float32),
        "sae_pooled": np.asarray(host["sae_pooled"], np.float32),
    }
    for pooling in self.poolings:
      sel = tracking.select_features(pooled[pooling], self.k_max[pooling], pooling)
      out["sel_fid__" + pooling], out["sel_act__" + pooling] = sel.fid, sel.act
      out["sel_n__" + pooling] = sel.n_valid
    n = batch.n_real
    return {k: v[:n] for k, v in out.items()}

  def birth_threshold(self, pooling: str) -> float:
    if pooling in self.birth_thresholds:
      return float(self.birth_thresholds[pooling])
    if float(self.config.tracking.get("birth_threshold_quantile", 0.0)) > 0:
      raise ConfigError("config.tracking.birth_threshold_quantile is set: pass the calibrated "
                        "birth_thresholds (features.json 'birth_thresholds') to Extractor")
    return self.base.birth_threshold

  def tracker(self, tracked: TrackedSet) -> tracking.TrackerConfig:
    """The set's tracker with its pooling's birth threshold."""
    return dataclasses.replace(tracked.cfg, birth_threshold=self.birth_threshold(tracked.cfg.pooling))

  def track(self, selections: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Phase 2 (host): tracks and metrics of every set from phase-1 selections (any row count)."""
    out = {}
    for pooling in self.poolings:
      sel = tracking.Selection(selections["sel_fid__" + pooling], selections["sel_act__" + pooling],
                               selections["sel_n__" + pooling])
      group = [s for s in self.sets if s.cfg.pooling == pooling]
      costs = None
      if any(s.cfg.needs_costs for s in group):
        costs = tracking.association_costs(self.w_unit, sel, self.base)  # weights only
      for s in group:
        cfg = self.tracker(s)
        tr = tracking.track_selection(sel, costs if cfg.needs_costs else None, cfg)
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


def calibrate_birth_thresholds(config, sets: list[TrackedSet],
                               selections: dict[str, np.ndarray]) -> dict[str, float]:
  """Birth threshold per pooling: `config.tracking.birth_threshold`, or with
  `birth_threshold_quantile` q in (0, 1) the q-quantile of the positive pooled activations in the
  selected lists (configured top_k; every example and layer; labels are never read)."""
  q = float(config.tracking.get("birth_threshold_quantile", 0.0))
  base = sets[0].cfg
  out = {}
  for pooling in dict.fromkeys(s.cfg.pooling for s in sets):
    if q <= 0:
      out[pooling] = float(base.birth_threshold)
      continue
    act = selections["sel_act__" + pooling][..., :base.top_k]
    pos = act[act > 0]
    out[pooling] = float(np.quantile(pos, q)) if pos.size else float(base.birth_threshold)
  return out


def check_saes(model, saes) -> None:
  """The SAEs must be one per tracked model layer, for this model's width."""
  layers = [int(l) for l in getattr(saes, "layers", range(saes.params["W_dec"].shape[0]))]
  if layers != [int(l) for l in model.layers]:
    raise StoreMismatchError(f"SAEs cover layers {layers}, the model tracks {list(model.layers)}: "
                             "train SAEs for config.model.layers (stage 'train')")
  shape = tuple(saes.params["W_dec"].shape)
  if shape[0] != model.n_layers or shape[2] != model.d_model:
    raise StoreMismatchError(f"SAE decoders have shape {shape}; the model needs "
                             f"[{model.n_layers}, M, {model.d_model}]")


# ------------------------------------------------------------------------------------------------
# Stage


def _hash_json(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def sae_fingerprint(saes) -> str:
  """The SAEs' manifest hash when they carry one, else a hash of arch, layers, scale and decoders."""
  for attr in ("manifest_hash", "manifest"):
    value = getattr(saes, attr, None)
    if value:
      return value if isinstance(value, str) else _hash_json(value)
  h = hashlib.sha256()
  h.update(json.dumps([str(getattr(saes, "arch", "")), [int(l) for l in saes.layers]]).encode())
  h.update(np.asarray(jax.device_get(saes.input_scale), np.float32).tobytes())
  h.update(np.asarray(jax.device_get(saes.params["W_dec"]), np.float32).tobytes())
  return h.hexdigest()[:16]


def _savez_compressed(path: str, **arrays) -> None:
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


def _track_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Rows whose full tracks are kept: up to n, half per label, in table order (-1 = all)."""
  if n < 0 or n >= labels.size:
    return np.arange(labels.size)
  per = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
  take = []
  for c, rows in per.items():
    take.extend(rows[:max(n // max(len(per), 1), 1)].tolist())
  return np.sort(np.asarray(take[:n], np.int64))


def _out_dir(config, workdir: str, dataset: str) -> str:
  return os.path.join(paths.for_config(config, workdir).tracking, dataset)


def run(config, workdir: str, model=None, saes=None) -> None:
  """Stage entry point; `model` and `saes` may be passed in (tests, notebooks)."""
  dataset = config.qa.dataset
  out_dir = _out_dir(config, workdir, dataset)
  if io_utils.is_done(out_dir):
    logging.info("track: %s is complete; skipping", out_dir)
    return
  examples = answers.load_examples(config, workdir, dataset)
  folds = answers.load_folds(config, workdir, dataset)
  if not examples:
    raise DataError(f"the answer stage wrote no usable examples for {dataset!r}")
  answers_dir = paths.for_config(config, workdir).answers(dataset)
  examples_hash = _file_hash(os.path.join(answers_dir, "manifest.json"))
  if model is None:
    from ghosttrack_jax import lm  # pylint: disable=g-import-not-at-top
    model = lm.load_model(config.model)
  if saes is None:
    from ghosttrack_jax import sae_train  # pylint: disable=g-import-not-at-top
    saes = sae_train.load_trained_saes(config, workdir)
  t0 = time.time()
  result = compute(config, model, saes, examples, out_dir, examples_hash)
  write_outputs(config, out_dir, dataset, examples, folds, result, examples_hash,
                sae_fingerprint(saes), model)
  logging.info("track: %d examples, %d layers, %d feature sets in %.1f s -> %s", len(examples),
               model.n_layers, len(result["sets"]), time.time() - t0, out_dir)


def compute(config, model, saes, examples: list[dict], out_dir: str,
            examples_hash: str = "") -> dict[str, Any]:
  """Every per-example array of the stage, in example order.

  Phase 1 (model, SAEs, selections) runs per length-sorted batch and is cached under partial/;
  the birth thresholds are then fixed (calibrated if configured) and phase 2 tracks every set.
  """
  extractor = Extractor(model, saes, config)
  n = len(examples)
  batch_size = int(config.tracking.batch_size)
  lengths = np.array([len(e["prompt_ids"]) + len(e["answer_ids"]) for e in examples])
  order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: less padding
  key = {"config": {k: config[k].to_dict() for k in ("model", "sae", "tracking", "qa")},
         "ablations": bool(config.evaluate.ablations), "examples": examples_hash,
         "ids": _hash_json([e["id"] for e in examples]), "sae": sae_fingerprint(saes)}
  key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from key.json
  partial = os.path.join(out_dir, "partial")
  key_path = os.path.join(partial, "key.json")
  if os.path.exists(key_path) and io_utils.read_json(key_path) != key:
    logging.info("track: inputs changed since the interrupted run; discarding %s", partial)
    shutil.rmtree(partial)
  if not os.path.exists(key_path):
    os.makedirs(partial, exist_ok=True)
    io_utils.atomic_write_json(key_path, key)
  parts, truncated = [], 0
  n_batches = -(-n // batch_size)
  for i in range(n_batches):
    rows = order[i * batch_size:(i + 1) * batch_size]
    path = os.path.join(partial, f"batch_{i:05d}.npz")
    if os.path.exists(path):
      with np.load(path, allow_pickle=False) as z:
        part = {k: z[k] for k in z.files}
    else:
      batch = make_batch(examples, rows, batch_size, model.pad_id, int(model.max_positions))
      part = extractor.features(batch)
      part["rows"] = rows
      part["n_truncated"] = np.array(batch.n_truncated)
      io_utils.atomic_save_npz(path, **part)
      logging.info("track: batch %d/%d", i + 1, n_batches)
    truncated += int(part.pop("n_truncated"))
    parts.append(part)
  out = _scatter(parts, n)
  out["sets"], out["n_truncated"] = extractor.sets, truncated
  out["birth_thresholds"] = calibrate_birth_thresholds(config, extractor.sets, out)
  extractor.birth_thresholds = out["birth_thresholds"]
  tracked = []
  for s in range(0, n, batch_size):  # phase 2, in example order
    chunk = {k: v[s:s + batch_size] for k, v in out.items() if k.startswith("sel_")}
    tracked.append(extractor.track(chunk))
  m = max(t["trk_birth"].shape[1] for t in tracked)
  for key in tracked[0]:
    if key.startswith("trk_"):
      fill = 0 if key == "trk_act" else -1
      tracked_key = [np.pad(t[key], [(0, 0), (0, m - t[key].shape[1])] + [(0, 0)] * (t[key].ndim - 2),
                            constant_values=fill) for t in tracked]
      out[key] = np.concatenate(tracked_key)
    else:
      out[key] = np.concatenate([t[key] for t in tracked])
  return out


def _scatter(parts: list[dict], n: int) -> dict[str, np.ndarray]:
  """Batch results (length-sorted order) back to example order."""
  rows = np.concatenate([p["rows"] for p in parts])
  if not np.array_equal(np.sort(rows), np.arange(n)):
    raise AssertionError("batches do not cover every example exactly once")
  out = {}
  for key in parts[0]:
    if key == "rows":
      continue
    first = parts[0][key]
    arr = np.zeros((n,) + first.shape[1:], first.dtype)
    arr[rows] = np.concatenate([p[key] for p in parts])
    out[key] = arr
  return out


def write_outputs(config, out_dir: str, dataset: str, examples: list[dict], folds: dict,
                  result: dict, examples_hash: str, sae_hash: str, model) -> None:
  """features.npz/json, summaries.npz, tracks.npz, degeneracy.json, then DONE."""
  base = result["sets"][0].cfg
  births = result["birth_thresholds"]
  n = len(examples)
  eid = np.array([e["id"] for e in examples])
  pos = {e: i for i, e in enumerate(np.asarray(folds["example_id"]).astype(str))}
  missing = [e for e in eid if e not in pos]
  if missing:
    raise StoreMismatchError(f"example {missing[0]} is not in the answer stage's fold file")
  idx = np.array([pos[e] for e in eid])
  labels = np.array([int(e["label"]) for e in examples], np.int8)
  words = np.array([len(str(e.get("answer_text", "")).split()) for e in examples], np.float64)
  tokens = np.array([len(e["answer_ids"]) for e in examples], np.float64)
  sc = result["scalars"]
  arrays = {
      "example_id": eid,
      "group_id": np.array([int(e["group_id"]) for e in examples], np.int64),
      "label": labels,
      "folds": np.asarray(folds["folds"])[:, idx].astype(np.int16),
      "X__scalar_baselines": np.stack([tokens, words, sc[:, 0], sc[:, 1], sc[:, 2]], 1).astype(np.float32),
      "X__reconstruction": divergence.reconstruction_metrics(result["errors"]).astype(np.float32),
      "X__raw_resid": result["raw_resid"].astype(np.float32),
      "X__sae_pooled": result["sae_pooled"].astype(np.float16),
      "X__greedy_mismatch": sc[:, 3:4].astype(np.float32),
  }
  n_layers = int(model.n_layers)
  d_model, width = result["raw_resid"].shape[-1], result["sae_pooled"].shape[-1]
  feature_sets = {}
  for s in result["sets"]:
    arrays["X__" + s.name] = result["X__" + s.name].astype(np.float32)
    feature_sets[s.name] = {"columns": list(divergence.METRIC_NAMES), "per_layer": False,
                            "kind": s.kind, "variant": {"association": s.cfg.association,
                                                        "top_k": s.cfg.top_k,
                                                        "pooling": s.cfg.pooling,
                                                        "birth_threshold": births[s.cfg.pooling]}}
  feature_sets["reconstruction"] = {
      "columns": list(divergence.RECONSTRUCTION_NAMES), "per_layer": False, "kind": "reconstruction",
      "variant": {"error": "relative" if config.tracking.reconstruction_normalised else "mse",
                  "positions": "last_token" if base.pooling == "last_token" else "answer_mean"}}
  feature_sets["scalar_baselines"] = {"columns": list(SCALAR_COLUMNS), "per_layer": False,
                                      "kind": "baseline"}
  feature_sets["raw_resid"] = {"columns": [f"d{i}" for i in range(d_model)], "per_layer": True,
                               "kind": "probe", "variant": {"pooling": "answer_mean"}}
  feature_sets["sae_pooled"] = {"columns": [f"f{i}" for i in range(width)], "per_layer": True,
                                "kind": "probe", "variant": {"pooling": base.pooling}}
  feature_sets["greedy_mismatch"] = {"columns": ["greedy_mismatch"], "per_layer": False,
                                     "kind": "diagnostic"}
  for name, info in feature_sets.items():
    shape = arrays["X__" + name].shape
    want = (n, n_layers, len(info["columns"])) if info["per_layer"] else (n, len(info["columns"]))
    if shape != want:
      raise AssertionError(f"feature set {name}: shape {shape}, expected {want}")
  mode = str(examples[0].get("mode", "own_answer"))
  meta = {
      "schema_version": SCHEMA_VERSION, "dataset": dataset, "mode": mode, "n_examples": n,
      "n_layers": n_layers, "layers": [int(l) for l in model.layers], "top_k": base.top_k,
      "pooling": base.pooling, "association": base.association,
      "tracker": dataclasses.asdict(base),
      "birth_thresholds": births,
      "birth_threshold_quantile": float(config.tracking.birth_threshold_quantile),
      "activation_units": "SAE codes in scaled-input units (saes.encode, E||s x||^2 = 1)",
      "nll_units": "nats", "sae_manifest_hash": sae_hash, "examples_manifest_hash": examples_hash,
      "n_truncated_prompts": int(result["n_truncated"]),
      "greedy_mismatch_total": int(sc[:, 3].sum()),
      "feature_sets": feature_sets,
  }
  _savez_compressed(os.path.join(out_dir, "features.npz"), **arrays)
  io_utils.atomic_write_json(os.path.join(out_dir, "features.json"), meta)

  summaries = {"example_id": eid, "label": labels,
               "n_tracks": result["n_tracks"].astype(np.int32),
               "total_deaths": result["total_deaths"].astype(np.int32),
               "max_concurrent": result["max_concurrent"].astype(np.int32),
               "layer_list_length": result["layer_list_length"].astype(np.int32),
               "layer_reconstruction_error": result["errors"].astype(np.float32)}
  for key in PER_LAYER_STATS:
    summaries["layer_" + key] = result["layer_" + key].astype(np.float32)
  _savez_compressed(os.path.join(out_dir, "summaries.npz"), **summaries)

  keep = _track_subset(labels, int(config.tracking.n_track_examples))
  m = int(result["n_tracks"][keep].max(initial=0))
  _savez_compressed(os.path.join(out_dir, "tracks.npz"), example_id=eid[keep],
                    label=labels[keep], n_tracks=result["n_tracks"][keep].astype(np.int32),
                    birth=result["trk_birth"][keep, :m], death=result["trk_death"][keep, :m],
                    act=result["trk_act"][keep, :m], fid=result["trk_fid"][keep, :m])

  sel_act = result["sel_act__" + base.pooling][..., :base.top_k]
  report = {"sets": {}}
  for s in result["sets"]:
    x = arrays["X__" + s.name]
    if s.name == "ghosttrack":
      report["sets"][s.name] = divergence.degeneracy_report(
          x, density=result["layer_density"], top_k=base.top_k,
          list_lengths=result["layer_list_length"])
    else:
      report["sets"][s.name] = {"constant": divergence.constant_metrics(x),
                                "near_constant": divergence.constant_metrics(x, near=True)}
  quantiles = (0.1, 0.5, 0.9, 0.99)
  per_layer = []
  for layer in range(n_layers):
    v = sel_act[:, layer][sel_act[:, layer] > 0]
    per_layer.append({"n": int(v.size), **{f"q{q}": float(np.quantile(v, q)) if v.size else 0.0
                                           for q in quantiles},
                      "share_above_birth": float(np.mean(v > births[base.pooling])) if v.size else 0.0})
  report["pooled_activation_per_layer"] = per_layer
  report["units"] = meta["activation_units"]
  report["birth_thresholds"] = births
  io_utils.atomic_write_json(os.path.join(out_dir, "degeneracy.json"), report)
  shutil.rmtree(os.path.join(out_dir, "partial"), ignore_errors=True)
  io_utils.write_done(out_dir, {"n_examples": n, "n_layers": n_layers,
                                "feature_sets": list(feature_sets)})
