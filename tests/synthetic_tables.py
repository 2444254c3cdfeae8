"""Synthetic answer-stage and track-stage outputs for detect/evaluate/report tests (no model needed)."""

import os

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import prompts
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.runtime import atomic_io, paths
from ghosttrack_jax.track import divergence


def tiny_config(name="synth", dataset="nq_open"):
  c = config_lib.base_config()
  c.model.name = name
  c.model.source = "random"
  c.qa.dataset = dataset
  c.evaluate.n_folds = 3
  c.evaluate.inner_folds = 2
  c.evaluate.n_bootstrap = 200
  c.evaluate.classifiers = ("logistic", "random_forest")
  c.evaluate.logistic_cs = (0.1, 1.0)
  return c


def write_synthetic(
  config,
  workdir,
  n=120,
  n_layers=3,
  d=6,
  m=10,
  seed=0,
  signal=2.5,
  with_tracks=True,
  n_relations=2,
  positive_rate=0.4,
):
  """Writes answers/<dataset>/ and tracking/<dataset>/ with label signal in a few columns: GhostTrack's
  entropy_mean, raw residual layer 1, the last answer token's layer 2, semantic entropy, P(True) (negative)
  and the mean NLL; the last prompt token (TBG) and subject familiarity carry none. A share
  `positive_rate` of the examples is hallucinated (1.0: one class only)."""
  rng = np.random.default_rng(seed)
  p = paths.for_config(config, workdir)
  y = (rng.random(n) < positive_rate).astype(int)
  examples = []
  for i in range(n):
    words = ["paris"] if y[i] == 0 else ["the", "moon", "landing"][: 1 + i % 3]
    examples.append(
      {
        "id": f"q-{i:04d}",
        "question": f"question number {i}?",
        "prompt_ids": [1, 2, 3],
        "answer_ids": list(range(len(words))),
        "answer_text": " ".join(words),
        "gold": ["paris"],
        "label": int(y[i]),
        "label_method": "containment",
        "labels_all": {"containment": int(y[i]), "exact": int(y[i] or i % 5 == 0), "f1": int(y[i])},
        "mode": "own_answer",
        "flags": [],
        "relation": ("country", "religion", "capital", "sport", "genre", "language")[i % n_relations],
      }
    )
  out_dir = p.answers(config.qa.dataset)
  os.makedirs(out_dir, exist_ok=True)
  fmt = prompts.PromptFormat("fewshot", [("Q?", "A")])
  q_scores = {
    "semantic_entropy": rng.gamma(2.0, 0.3, n) + 0.8 * y,
    "semantic_entropy_discrete": rng.gamma(2.0, 0.3, n) + 0.5 * y,
    "naive_entropy": rng.normal(size=n),
    "num_classes": rng.integers(1, 11, n).astype(float),
    "lexical_dissimilarity": rng.random(n),
    "eigenscore": rng.normal(size=n),
    "p_true": 1 / (1 + np.exp(-(rng.normal(size=n) - 1.5 * y))),
    "subject_logprob": rng.normal(-20, 5, n),
    "subject_logprob_per_token": rng.normal(-5, 1, n),
    "subject_tokens": rng.integers(1, 6, n).astype(float),
  }
  answer_stage.fold_and_write(config, examples, [], fmt, out_dir, scores=q_scores)
  folds = examples_lib.load_folds(config, workdir)
  gt = rng.normal(size=(n, 26)).astype(np.float32)
  gt[:, 0] += signal * y  # entropy_mean carries the signal
  gt[:, 11] = 8.0  # competition_max constant (saturation)
  abl = rng.normal(size=(n, 26)).astype(np.float32)  # ablation without signal
  sweep = rng.normal(size=(n, 26)).astype(np.float32)
  sweep[:, 0] += 2 * signal * y  # a tracker setting with a stronger signal (inner CV should find it)
  rec = rng.normal(size=(n, 8)).astype(np.float32)
  scal = np.stack(
    [
      [len(e["answer_ids"]) for e in examples],
      [len(e["answer_text"].split()) for e in examples],
      rng.normal(size=n) + 0.5 * y,
      rng.normal(size=n),
      rng.normal(size=n),
      rng.normal(size=n) + 0.5 * y,
    ],
    1,
  ).astype(np.float32)
  positions = {
    k: rng.normal(size=(n, n_layers, d)).astype(np.float16) for k in ("tbg", "ans_first", "ans_last")
  }
  positions["ans_last"][:, 2, 1] += (2.0 * y).astype(np.float16)
  raw = rng.normal(size=(n, n_layers, d)).astype(np.float32)
  raw[:, 1, 0] += 2.0 * y
  sae = np.abs(rng.normal(size=(n, n_layers, m))).astype(np.float16)
  tr = os.path.join(p.tracking, config.qa.dataset)
  os.makedirs(tr, exist_ok=True)
  atomic_io.atomic_save_npz(
    os.path.join(tr, "features.npz"),
    example_id=folds["example_id"],
    group_id=folds["group_id"],
    label=folds["label"],
    folds=folds["folds"],
    X__ghosttrack=gt,
    X__ghosttrack_feature_id=abl,
    X__ghosttrack_topk25=sweep,
    X__reconstruction=rec,
    X__scalar_baselines=scal,
    X__raw_resid=raw,
    X__sae_pooled=sae,
    **{"X__" + k: v for k, v in positions.items()},
  )
  meta = {
    "schema_version": 1,
    "dataset": config.qa.dataset,
    "mode": "own_answer",
    "n_examples": n,
    "n_layers": n_layers,
    "layers": list(range(n_layers)),
    "top_k": 8,
    "pooling": "answer_max",
    "sae_manifest_hash": "abc",
    "feature_sets": {
      "ghosttrack": {"columns": list(divergence.METRIC_NAMES), "per_layer": False, "kind": "ghosttrack"},
      "ghosttrack_feature_id": {
        "columns": list(divergence.METRIC_NAMES),
        "per_layer": False,
        "kind": "ablation",
        "variant": {"association": "feature_id"},
      },
      "ghosttrack_topk25": {
        "columns": list(divergence.METRIC_NAMES),
        "per_layer": False,
        "kind": "sweep",
        "variant": {"top_k": 25},
      },
      "reconstruction": {
        "columns": list(divergence.RECONSTRUCTION_NAMES),
        "per_layer": False,
        "kind": "reconstruction",
      },
      "scalar_baselines": {
        "columns": ["answer_tokens", "answer_words", "mean_nll", "max_nll", "mean_entropy", "sum_nll"],
        "per_layer": False,
        "kind": "baseline",
      },
      "raw_resid": {"columns": [f"d{j}" for j in range(d)], "per_layer": True, "kind": "probe"},
      "sae_pooled": {"columns": [f"f{j}" for j in range(m)], "per_layer": True, "kind": "probe"},
      **{k: {"columns": [f"d{j}" for j in range(d)], "per_layer": True, "kind": "probe"} for k in positions},
    },
  }
  atomic_io.atomic_write_json(os.path.join(tr, "features.json"), meta)
  if with_tracks:
    k = 6
    birth = np.full((k, 4), -1, np.int32)
    death = np.full((k, 4), -1, np.int32)
    act = np.zeros((k, 4, n_layers), np.float32)
    fid = np.full((k, 4, n_layers), -1, np.int32)
    for t in range(k):
      birth[t, :3] = [0, 0, 1]
      death[t, :3] = [-1, 0, -1]
      act[t, 0, :] = rng.random(n_layers) + 0.5
      act[t, 1, 0] = 0.7
      act[t, 2, 1:] = 0.9
      fid[t, 0, :] = 3
      fid[t, 1, 0] = 5
      fid[t, 2, 1:] = 7
    atomic_io.atomic_save_npz(
      os.path.join(tr, "tracks.npz"),
      example_id=folds["example_id"][:k],
      act=act,
      fid=fid,
      birth=birth,
      death=death,
      n_tracks=np.full(k, 3, np.int32),
    )
  atomic_io.write_done(tr, {})
  return y
