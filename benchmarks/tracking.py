"""Texts/s of GhostTrack tracking + the 26 metrics: ours (`tracking` + `divergence`) against a
straightforward per-track, per-feature Python-loop implementation of the same algorithm (written
below as the reference), on the same inputs, asserting both give the same metrics.

  .venv/bin/python -m benchmarks.tracking                   # SmolLM2-135M-like shapes
  .venv/bin/python -m benchmarks.tracking --append          # ... and append to benchmarks/RESULTS.md

Inputs are synthetic but shaped like a real run: L layers of width-h SAEs over a d-wide residual;
each text carries "concepts" that keep a decoder direction across layers (under a different feature
id per layer, as independently trained SAEs do) for a few layers, plus sparse noise features, so
tracks really form, die and get born. Timing covers pooled codes -> top-k -> association -> lifecycle
-> 26 metrics; the one-off jit compile is reported separately.
"""

import os

# One BLAS thread: on a few shared cores a multi-threaded BLAS thrashes (10x slower batched matmuls).
# Must be set before numpy loads its BLAS. Both implementations run under the same setting.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import datetime
import platform
import subprocess
import time

import numpy as np
from scipy import optimize

from ghosttrack_jax.track import divergence, tracker

BIRTH, ASSOC, W_SEM, W_ACT = 0.5, 0.5, 0.6, 0.2


def make_inputs(n_texts, n_layers, width, d_model, n_concepts, seed=0):
  """Pooled codes [N, L, h] (float32) and decoders [L, h, D] (float32)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(width, d_model)).astype(np.float32)
  perm = np.stack([rng.permutation(width) for _ in range(n_layers)])
  w_dec = np.empty((n_layers, width, d_model), np.float32)
  for l in range(n_layers):
    w_dec[l, perm[l]] = base + 0.5 * rng.normal(size=(width, d_model)).astype(np.float32)
  pooled = np.zeros((n_texts, n_layers, width), np.float32)
  for b in range(n_texts):
    for c in rng.choice(width, n_concepts, replace=False):
      start = rng.integers(n_layers)
      stop = min(n_layers, start + 1 + rng.integers(n_layers // 2 + 1))
      level = rng.uniform(0.2, 3.0)
      for l in range(start, stop):
        pooled[b, l, perm[l, c]] = level * rng.uniform(0.7, 1.3)
    noise = rng.random((n_layers, width)) < 0.01
    pooled[b] += noise * rng.uniform(0, 1.0, size=(n_layers, width)).astype(np.float32)
  return pooled, w_dec


# ---- the reference: one Python object per track, one loop iteration per (track, feature) -------


class RefTrack:
  def __init__(self, track_id, layer, fid, act, emb):
    self.track_id, self.birth, self.death = track_id, layer, None
    self.obs = [(layer, fid, act)]
    self.act, self.emb = act, emb


def ref_select(a, k):
  """Positive entries, descending, ties to the lower feature id, at most k."""
  order = sorted(range(len(a)), key=lambda j: (-float(a[j]), j))
  out = []
  for j in order[:k]:
    if a[j] <= 0:
      break
    out.append((j, float(a[j])))
  return out


def ref_cost(track, emb, act):
  ne, nf = np.linalg.norm(track.emb), np.linalg.norm(emb)
  cos = 0.0 if ne == 0 or nf == 0 else float(np.clip(np.dot(track.emb, emb) / (ne * nf), -1, 1))
  if track.act > 1e-6:
    c = abs(track.act - act) / (track.act + act)
  else:
    c = 1.0 if act > 0.1 else 0.0
  return W_SEM * (1 - cos) + W_ACT * c


def ref_track_text(pooled, w_dec, k):
  n_layers = pooled.shape[0]
  tracks, alive = [], []
  max_concurrent = 0
  for layer in range(n_layers):
    feats = ref_select(pooled[layer], k)
    if layer == 0:
      for j, a in feats:
        if a > BIRTH:
          t = RefTrack(len(tracks), 0, j, a, w_dec[0, j])
          tracks.append(t)
          alive.append(t)
    else:
      matched_tracks, matched_feats = set(), set()
      if alive and feats:
        cost = np.zeros((len(alive), len(feats)))
        for i, t in enumerate(alive):
          for c, (j, a) in enumerate(feats):
            cost[i, c] = ref_cost(t, w_dec[layer, j], a)
        rows, cols = optimize.linear_sum_assignment(cost)
        for i, c in zip(rows, cols):
          if cost[i, c] < ASSOC:
            j, a = feats[c]
            t = alive[i]
            t.obs.append((layer, j, a))
            t.act, t.emb = a, w_dec[layer, j]
            matched_tracks.add(i)
            matched_feats.add(c)
      survivors = []
      for i, t in enumerate(alive):
        if i in matched_tracks:
          survivors.append(t)
        else:
          t.death = layer - 1
      alive = survivors
      for c, (j, a) in enumerate(feats):
        if c not in matched_feats and a > BIRTH:
          t = RefTrack(len(tracks), layer, j, a, w_dec[layer, j])
          tracks.append(t)
          alive.append(t)
    max_concurrent = max(max_concurrent, len(alive))
  return tracks, max_concurrent


def ref_metrics(tracks, max_concurrent, n_layers):
  def alive_at(t, layer):
    return t.birth <= layer and (t.death is None or t.death >= layer)

  def act_at(t, layer):
    for l, _, a in t.obs:
      if l == layer:
        return a
    return 0.0

  ent, comp, dom, dens = [], [], [], []
  for layer in range(n_layers):
    acts = [act_at(t, layer) for t in tracks if alive_at(t, layer)]
    total = sum(acts)
    h = 0.0
    if acts and total > 0:
      for a in acts:
        p = a / total
        if p > 0:
          h -= p * np.log2(p)
    ent.append(max(h, 0.0))
    comp.append(sum(1 for a in acts if a > 0.5))
    top = max(acts) if acts else 0.0
    dom.append(top / total if acts and top > 0 else 0.0)
    dens.append(len(acts))
  births = len(tracks)
  deaths = sum(1 for t in tracks if t.death is not None)
  stab = []
  for t in tracks:
    if len(t.obs) >= 2:
      acts = [a for _, _, a in t.obs]
      mean = sum(acts) / len(acts)
      var = sum((a - mean) ** 2 for a in acts) / len(acts)
      stab.append(1.0 / (1.0 + var))
  ent, comp, dom, dens = (np.array(v, float) for v in (ent, comp, dom, dens))
  s = [np.mean(stab), min(stab), sum(1 for v in stab if v < 0.5) / len(stab)] if stab else [0, 0, 0]
  return [
    ent.mean(),
    ent.max(),
    ent.std(),
    ent[-1],
    births,
    deaths,
    births / n_layers,
    deaths / n_layers,
    (births + deaths) / (2 * n_layers),
    (births - deaths) / births if births else 0.0,
    comp.mean(),
    comp.max(),
    comp.std(),
    comp[-1],
    np.sum(comp > 2) / n_layers,
    *s,
    dom.mean(),
    dom.min(),
    dom[-1],
    np.sum(dom < 0.5) / n_layers,
    dens.mean(),
    dens.max(),
    dens.std(),
    max_concurrent,
  ]


def reference(pooled, w_dec, k):
  return np.array([ref_metrics(*ref_track_text(p, w_dec, k), pooled.shape[1]) for p in pooled])


# ---- ours --------------------------------------------------------------------------------------


def ours(pooled, w_unit, cfg, batch):
  out = []
  for s in range(0, pooled.shape[0], batch):
    _, tr = tracker.track_pooled(pooled[s : s + batch], w_unit, cfg)
    out.append(divergence.track_metrics(tr))
  return np.concatenate(out)


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  import jax

  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return (
    f"{cpu}, {os.cpu_count()} visible cores (shared; load average {load} at the end), "
    f"jax {jax.__version__} on {jax.default_backend()}, one BLAS thread"
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--texts", type=int, default=16)
  p.add_argument("--layers", type=int, default=30)
  p.add_argument("--width", type=int, default=2304)
  p.add_argument("--d-model", type=int, default=576)
  p.add_argument("--top-k", type=int, default=50)
  p.add_argument("--concepts", type=int, default=60, help="persistent concepts per text")
  p.add_argument("--batch", type=int, default=16, help="texts per batch in ours")
  p.add_argument(
    "--repeats",
    type=int,
    default=4,
    help="timing rounds: ours on all texts (median), the reference on 1/repeats each",
  )
  p.add_argument("--append", action="store_true", help="append the result to benchmarks/RESULTS.md")
  args = p.parse_args(argv)

  pooled, w_dec = make_inputs(args.texts, args.layers, args.width, args.d_model, args.concepts)
  cfg = tracker.TrackerConfig.from_config(top_k=args.top_k)
  w_unit = np.asarray(tracker.unit_decoder(w_dec))  # host copy: the CPU cost path is numpy

  t0 = time.perf_counter()
  got = ours(pooled, w_unit, cfg, args.batch)  # includes jit compilation
  first = time.perf_counter() - t0
  # Interleaved timing, so that load from other processes hits both sides alike: each round times
  # ours on all texts, then the reference on the round's share of the texts.
  times, t_ref, want = [], 0.0, []
  for chunk in np.array_split(np.arange(args.texts), args.repeats):
    t0 = time.perf_counter()
    got = ours(pooled, w_unit, cfg, args.batch)
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    want.append(reference(pooled[chunk], w_dec, args.top_k))
    t_ref += time.perf_counter() - t0
  want = np.concatenate(want)
  t_ours = float(np.median(times))

  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  sel = tracker.select_features(pooled, args.top_k, "answer_max")
  _, tr = tracker.track_pooled(pooled, w_unit, cfg)
  n = args.texts
  lines = [
    f"shapes: {n} texts, L={args.layers}, h={args.width}, d={args.d_model}, k={args.top_k}, "
    f"batch {args.batch}; mean list length {sel.n_valid.mean():.1f}, "
    f"mean tracks/text {tr.n_tracks.mean():.1f}, mean deaths/text {tr.total_deaths.mean():.1f}, "
    f"mean alive tracks/layer {got[:, divergence.METRIC_NAMES.index('density_mean')].mean():.1f}",
    f"ours:      {n / t_ours:9.1f} texts/s  ({t_ours * 1e3 / n:.2f} ms/text; median of "
    f"{args.repeats} interleaved rounds; first call incl. jit {first:.2f} s)",
    f"reference: {n / t_ref:9.1f} texts/s  ({t_ref * 1e3 / n:.1f} ms/text)",
    f"speedup:   {t_ref / t_ours:.1f}x  (metrics equal: rtol 1e-5, atol 1e-5)",
  ]
  print("\n".join(lines))
  if args.append:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    cmd = "python -m benchmarks.tracking " + " ".join(
      f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "append"
    )
    try:
      commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
      ).stdout.strip()
      dirty = subprocess.run(
        [
          "git",
          "status",
          "--porcelain",
          "--",
          "benchmarks/tracking.py",
          "ghosttrack_jax/track/tracker.py",
          "ghosttrack_jax/track/divergence.py",
        ],
        capture_output=True,
        text=True,
        check=False,
      ).stdout.strip()
      commit += " (with uncommitted changes to the benchmarked files)" if dirty else ""
    except OSError:
      commit = "?"
    entry = (
      f"\n## tracking + 26 metrics (benchmarks/tracking.py), "
      f"{datetime.date.today().isoformat()}\n\n"
      f"- command: `{cmd}`\n- machine: {machine()}\n- commit: {commit}\n" + "".join(f"- {l}\n" for l in lines)
    )
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
      if new:
        f.write(
          "# Benchmark results\n\nEach section is owned by its benchmark; entries are "
          "appended, never edited.\n"
        )
      f.write(entry)


if __name__ == "__main__":
  main()
