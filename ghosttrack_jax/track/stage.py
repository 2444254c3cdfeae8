"""Stage `track`: GhostTrack metrics and every baseline feature from one teacher-forced pass per batch.

For each answered, labelled example of the `answer` stage (`cache/<model>/answers/<dataset>/`), one
forward pass over `prompt_ids ⊕ answer_ids` gives all L layers' raw residuals and the logits
(docs/method.md §6.2 step 5). From that pass, at the answer positions (the inputs of the answer tokens):

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
import json
import logging
import os
import shutil
import time
import zipfile
from typing import Any

import numpy as np

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, progress
from ghosttrack_jax.sae import trained
from ghosttrack_jax.track import divergence, feature_table, features, tracker


def _track_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Rows whose full tracks are kept: up to n, half per label, in table order (-1 = all)."""
  if n < 0 or n >= labels.size:
    return np.arange(labels.size)
  per = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
  take = []
  for c, rows in per.items():
    take.extend(rows[: max(n // max(len(per), 1), 1)].tolist())
  return np.sort(np.asarray(take[:n], np.int64))


def association_shares(birth, death, n_tracks, n_layers: int) -> list[dict]:
  """Per layer transition l -> l+1, over every text: the tracks alive at l, how many were continued
  (an association accepted), and the share; plus the tracks born and dead at l (never continued).
  birth, death [B, M] (padded past n_tracks [B]; death = tracker.NO_DEATH for tracks alive at the end)."""
  valid = np.arange(birth.shape[1])[None, :] < np.asarray(n_tracks)[:, None]
  b, d = birth[valid], death[valid]
  last = np.where(d == tracker.NO_DEATH, n_layers - 1, d)
  out = []
  for layer in range(n_layers - 1):
    alive = int(np.sum((b <= layer) & (last >= layer)))
    died = int(np.sum(d == layer))
    out.append(
      {
        "layer": layer,
        "alive": alive,
        "continued": alive - died,
        "accepted_share": (alive - died) / alive if alive else None,
        "born_and_died_here": int(np.sum((b == layer) & (d == layer))),
      }
    )
  return out


def run(config, workdir: str, model=None, saes=None) -> None:
  """Stage entry point; `model` and `saes` may be passed in (tests, notebooks)."""
  dataset = config_lib.question_set(config)
  out_dir = feature_table.directory(config, workdir, dataset)
  if atomic_io.is_done(out_dir):
    feature_table.verify(out_dir)  # a damaged table stops the rerun here, not in a later stage or never
    logging.info("track: %s is complete; skipping", out_dir)
    return
  examples = examples_lib.load_examples(config, workdir, dataset)
  folds = examples_lib.load_folds(config, workdir, dataset)
  if not examples:
    raise DataError(f"the answer stage wrote no usable examples for {dataset!r}")
  examples_hash = examples_lib.manifest_sha256(config, workdir, dataset)[:16]
  if model is None:
    model = lm.load_model(config.model)
  if saes is None:
    saes = trained.load_trained_saes(config, workdir)
  t0 = time.time()
  result = compute(config, model, saes, examples, out_dir, examples_hash)
  write_outputs(
    config, out_dir, dataset, examples, folds, result, examples_hash, features.sae_fingerprint(saes), model
  )
  logging.info(
    "track: %d examples, %d layers, %d feature sets in %.1f s -> %s",
    len(examples),
    model.n_layers,
    len(result["sets"]),
    time.time() - t0,
    out_dir,
  )


def compute(
  config, model, saes, examples: list[dict], out_dir: str, examples_hash: str = ""
) -> dict[str, Any]:
  """Every per-example array of the stage, in example order.

  Phase 1 (model, SAEs, selections) runs per length-sorted batch and is cached under partial/;
  the birth thresholds are then fixed (calibrated if configured) and phase 2 tracks every set.
  """
  featurizer = features.Featurizer(model, saes, config)
  n = len(examples)
  batch_size = int(config.tracking.batch_size)
  lengths = np.array([len(e["prompt_ids"]) + len(e["answer_ids"]) for e in examples])
  order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: less padding
  key = {
    "config": {k: config[k].to_dict() for k in ("model", "sae", "tracking", "qa")},
    "ablations": bool(config.evaluate.ablations),
    "examples": examples_hash,
    "ids": features.hash_json([e["id"] for e in examples]),
    "sae": features.sae_fingerprint(saes),
  }
  key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from key.json
  partial = os.path.join(out_dir, "partial")
  key_path = os.path.join(partial, "key.json")
  if os.path.exists(key_path) and atomic_io.read_json(key_path) != key:
    logging.info("track: inputs changed since the interrupted run; discarding %s", partial)
    shutil.rmtree(partial)
  if not os.path.exists(key_path):
    os.makedirs(partial, exist_ok=True)
    atomic_io.atomic_write_json(key_path, key)
  parts, truncated = [], 0
  n_batches = -(-n // batch_size)
  for i in progress.track(range(n_batches), "track: forward passes", "batch"):
    rows = order[i * batch_size : (i + 1) * batch_size]
    path = os.path.join(partial, f"batch_{i:05d}.npz")
    part = _load_part(path) if os.path.exists(path) else None
    if part is None:
      batch = features.make_batch(examples, rows, batch_size, model.pad_id, int(model.max_positions))
      part = featurizer.features(batch)
      part["rows"] = rows
      part["n_truncated"] = np.array(batch.n_truncated)
      atomic_io.atomic_save_npz(path, **part)
    truncated += int(part.pop("n_truncated"))
    parts.append(part)
  out = _scatter(parts, n)
  out["sets"], out["n_truncated"] = featurizer.sets, truncated
  out["birth_thresholds"] = features.calibrate_birth_thresholds(config, featurizer.sets, out)
  featurizer.birth_thresholds = out["birth_thresholds"]
  tracked = []
  for s in progress.track(range(0, n, batch_size), "track: tracks", "batch"):  # phase 2, in example order
    chunk = {k: v[s : s + batch_size] for k, v in out.items() if k.startswith("sel_")}
    tracked.append(featurizer.track(chunk))
  m = max(t["trk_birth"].shape[1] for t in tracked)
  for key in tracked[0]:
    if key.startswith("trk_"):
      fill = 0 if key == "trk_act" else -1
      tracked_key = [
        np.pad(
          t[key], [(0, 0), (0, m - t[key].shape[1])] + [(0, 0)] * (t[key].ndim - 2), constant_values=fill
        )
        for t in tracked
      ]
      out[key] = np.concatenate(tracked_key)
    else:
      out[key] = np.concatenate([t[key] for t in tracked])
  return out


def _load_part(path: str) -> dict | None:
  """A batch saved by an interrupted run, or None when it cannot be read (recomputed, never reused)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    logging.warning("track: the saved batch %s cannot be read (%s); recomputing it", path, e)
    return None


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


def write_outputs(
  config,
  out_dir: str,
  dataset: str,
  examples: list[dict],
  folds: dict,
  result: dict,
  examples_hash: str,
  sae_hash: str,
  model,
) -> None:
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
    "X__scalar_baselines": np.stack([tokens, words, sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 4]], 1).astype(
      np.float32
    ),
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
    feature_sets[s.name] = {
      "columns": list(divergence.METRIC_NAMES),
      "per_layer": False,
      "kind": s.kind,
      "variant": {
        "association": s.cfg.association,
        "top_k": s.cfg.top_k,
        "pooling": s.cfg.pooling,
        "birth_threshold": births[s.cfg.pooling],
      },
    }
  feature_sets["reconstruction"] = {
    "columns": list(divergence.RECONSTRUCTION_NAMES),
    "per_layer": False,
    "kind": "reconstruction",
    "variant": {
      "error": "relative" if config.tracking.reconstruction_normalised else "mse",
      "positions": "last_token" if base.pooling == "last_token" else "answer_mean",
    },
  }
  feature_sets["scalar_baselines"] = {
    "columns": list(features.SCALAR_COLUMNS),
    "per_layer": False,
    "kind": "baseline",
  }
  feature_sets["raw_resid"] = {
    "columns": [f"d{i}" for i in range(d_model)],
    "per_layer": True,
    "kind": "probe",
    "variant": {"pooling": "answer_mean"},
  }
  feature_sets["sae_pooled"] = {
    "columns": [f"f{i}" for i in range(width)],
    "per_layer": True,
    "kind": "probe",
    "variant": {"pooling": base.pooling},
  }
  for name, where in (
    ("tbg", "the last prompt token (sees the question only)"),
    ("ans_first", "the first answer token"),
    ("ans_last", "the last answer token"),
  ):
    arrays["X__" + name] = result[name].astype(np.float16)
    feature_sets[name] = {
      "columns": [f"d{i}" for i in range(d_model)],
      "per_layer": True,
      "kind": "probe",
      "variant": {"position": where},
    }
  feature_sets["greedy_mismatch"] = {"columns": ["greedy_mismatch"], "per_layer": False, "kind": "diagnostic"}
  for name, info in feature_sets.items():
    shape = arrays["X__" + name].shape
    want = (n, n_layers, len(info["columns"])) if info["per_layer"] else (n, len(info["columns"]))
    if shape != want:
      raise AssertionError(f"feature set {name}: shape {shape}, expected {want}")
  mode = str(examples[0].get("mode", "own_answer"))
  meta = {
    "schema_version": feature_table.SCHEMA_VERSION,
    "dataset": dataset,
    "mode": mode,
    "n_examples": n,
    "n_layers": n_layers,
    "layers": [int(l) for l in model.layers],
    "top_k": base.top_k,
    "pooling": base.pooling,
    "association": base.association,
    "tracker": dataclasses.asdict(base),
    "birth_thresholds": births,
    "birth_threshold_quantile": float(config.tracking.birth_threshold_quantile),
    "activation_units": "SAE codes in scaled-input units (saes.encode, E||s x||^2 = 1)",
    "nll_units": "nats",
    "sae_manifest_hash": sae_hash,
    "examples_manifest_hash": examples_hash,
    "n_truncated_prompts": int(result["n_truncated"]),
    "greedy_mismatch_total": int(sc[:, 3].sum()),
    "feature_sets": feature_sets,
  }

  summaries = {
    "example_id": eid,
    "label": labels,
    "n_tracks": result["n_tracks"].astype(np.int32),
    "total_deaths": result["total_deaths"].astype(np.int32),
    "max_concurrent": result["max_concurrent"].astype(np.int32),
    "layer_list_length": result["layer_list_length"].astype(np.int32),
    "layer_reconstruction_error": result["errors"].astype(np.float32),
  }
  for key in features.PER_LAYER_STATS:
    summaries["layer_" + key] = result["layer_" + key].astype(np.float32)

  keep = _track_subset(labels, int(config.tracking.n_track_examples))
  m = int(result["n_tracks"][keep].max(initial=0))
  tracks = {
    "example_id": eid[keep],
    "label": labels[keep],
    "n_tracks": result["n_tracks"][keep].astype(np.int32),
    "birth": result["trk_birth"][keep, :m],
    "death": result["trk_death"][keep, :m],
    "act": result["trk_act"][keep, :m],
    "fid": result["trk_fid"][keep, :m],
  }

  sel_act = result["sel_act__" + base.pooling][..., : base.top_k]
  report = {"sets": {}}
  for s in result["sets"]:
    x = arrays["X__" + s.name]
    if s.name == "ghosttrack":
      report["sets"][s.name] = divergence.degeneracy_report(
        x, density=result["layer_density"], top_k=base.top_k, list_lengths=result["layer_list_length"]
      )
    else:
      report["sets"][s.name] = {
        "constant": divergence.constant_metrics(x),
        "near_constant": divergence.constant_metrics(x, near=True),
      }
  quantiles = (0.1, 0.5, 0.9, 0.99)
  per_layer = []
  for layer in range(n_layers):
    v = sel_act[:, layer][sel_act[:, layer] > 0]
    per_layer.append(
      {
        "n": int(v.size),
        **{f"q{q}": float(np.quantile(v, q)) if v.size else 0.0 for q in quantiles},
        "share_above_birth": float(np.mean(v > births[base.pooling])) if v.size else 0.0,
      }
    )
  report["pooled_activation_per_layer"] = per_layer
  report["association_per_layer"] = association_shares(
    result["trk_birth"], result["trk_death"], result["n_tracks"], n_layers
  )
  report["units"] = meta["activation_units"]
  report["birth_thresholds"] = births
  feature_table.save(out_dir, arrays, meta, summaries, tracks, report)
  shutil.rmtree(os.path.join(out_dir, "partial"), ignore_errors=True)
  feature_table.mark_done(out_dir, meta)
