"""Per-layer SAE quality on held-out rows (docs/sae_recipes.md §5), and the per-layer table in results/<model>/sae/.

Reconstruction metrics, from up to `sae_training.eval_tokens` held-out rows per layer (raw units, folded
weights): L0 (mean, std), FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2 (not a per-token ratio),
the same without the outlier rows (`fvu_robust`: rows whose norm is above OUTLIER_NORM_RATIO x the
layer's median row norm, massive-activation tokens, are left out; `outlier_rows` counts them; the FVU
target is judged on it), mean cosine similarity (also `cosine_robust`), relative reconstruction bias gamma = E||x_hat||^2 / E[x . x_hat], feature density
rho_i and the histogram of log10(rho_i + 1e-10), very dense latents (rho > 0.1), latents never firing on
the eval rows, and the dead fraction from the training counters (n_i >= dead_tokens; when the run saw
fewer tokens than that window nothing can be dead, and the table says so), and `silent_last_epoch`, the
share of latents that did not fire during the whole last epoch (the dead test a short run can make).

Fidelity by splicing (`sae_training.eval_ce`), on `sae_training.eval_windows` held-out token windows:
each layer's reconstruction replaces that block's output at positions 1.. (position 0, the attention
sink, was never trained on and is left as is); next-token CE is averaged over the predictions made at
positions 1..T-2. delta LM loss = L_spliced - L_orig; CE-loss recovered = (L_zero - L_spliced) /
(L_zero - L_orig) with the same positions zero-ablated; KL(p_orig || p_spliced) per token, and the KL
score (KL_zero - KL_spliced) / KL_zero. Zero ablation is a weak baseline: lead with delta LM loss and KL.
"""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax import lm
from ghosttrack_jax.errors import DamagedOutputError, IncompleteStoreError
from ghosttrack_jax.runtime import atomic_io, progress
from ghosttrack_jax.sae import common

DENSITY_BINS = np.linspace(-10.0, 0.0, 41)  # log10(rho + 1e-10)
DENSE_LATENT = 0.1  # rho above this counts as a very dense latent
# FVU is judged without the outlier rows (fvu_robust): one massive-activation token can carry most of a
# layer's held-out variance, and an SAE that reconstructs it reads well on FVU whatever it does elsewhere.
TARGETS = {"l0": (16, 128), "fvu_robust": 0.25, "dead_fraction": 0.10, "ce_loss_recovered": 0.8}
OUTLIER_NORM_RATIO = 10.0  # held-out rows with a norm above this x the median row norm are outliers


@dataclasses.dataclass
class Report:
  rows: list  # one dict per layer
  log_density: np.ndarray  # [L, M] log10(rho + 1e-10)
  histograms: dict  # layer -> counts over DENSITY_BINS
  notes: list


def _row_sums(x, x_hat, active, keep):
  """Sums over the rows of one chunk (x, x_hat [N, D] raw, active [N, M] bool), over all rows and over
  the rows with keep [N] (those that are not outliers)."""
  x = x.astype(jnp.float32)
  k = keep.astype(jnp.float32)
  l0 = jnp.sum(active, axis=1).astype(jnp.float32)
  err = jnp.sum(jnp.square(x - x_hat), axis=1)
  sq_x = jnp.sum(x * x, axis=1)
  nx = jnp.sqrt(sq_x)
  nh = jnp.linalg.norm(x_hat, axis=1)
  cos = jnp.sum(x * x_hat, axis=1) / jnp.maximum(nx * nh, 1e-12)
  return {
    "sq_err": jnp.sum(err),
    "sum_x": jnp.sum(x, axis=0),
    "sum_sq_x": jnp.sum(sq_x),
    "l0": jnp.sum(l0),
    "l0_sq": jnp.sum(l0 * l0),
    "cos": jnp.sum(cos),
    "sq_hat": jnp.sum(x_hat * x_hat),
    "dot": jnp.sum(x * x_hat),
    "fired": jnp.sum(active, axis=0).astype(jnp.float32),
    "kept": jnp.sum(k),
    "kept_sq_err": jnp.sum(k * err),
    "kept_sum_x": jnp.sum(k[:, None] * x, axis=0),
    "kept_sum_sq_x": jnp.sum(k * sq_x),
    "kept_cos": jnp.sum(k * cos),
  }


_row_sums_jit = jax.jit(_row_sums)


def _chunk_stats(arch):
  @jax.jit
  def stats(p, x, keep):  # one layer: x [N, D] raw
    f, x_hat = arch.encode_decode(p, x)
    return _row_sums(x, x_hat, f > 0, keep)

  return stats


def outlier_threshold(norms) -> float:
  """Rows with a norm above this (OUTLIER_NORM_RATIO x the median row norm) are outliers."""
  return float(OUTLIER_NORM_RATIO * np.median(np.asarray(norms, np.float64)))


def _finish(a: dict, n_rows: int) -> dict:
  """Per-layer metrics from the accumulated sums of _row_sums."""
  n = float(n_rows)
  mean_x = a["sum_x"] / n
  total_var = a["sum_sq_x"] - n * float(mean_x @ mean_x)
  nk = float(a["kept"])
  mean_k = a["kept_sum_x"] / max(nk, 1.0)
  kept_var = a["kept_sum_sq_x"] - nk * float(mean_k @ mean_k)
  rho = a["fired"] / n
  l0 = a["l0"] / n
  return {
    "eval_tokens": int(n_rows),
    "l0": l0,
    "l0_std": float(np.sqrt(max(a["l0_sq"] / n - l0 * l0, 0.0))),
    "fvu": float(a["sq_err"] / max(total_var, 1e-30)),
    "fvu_robust": float(a["kept_sq_err"] / max(kept_var, 1e-30)),
    "outlier_rows": int(round(n - nk)),
    "explained_variance": float(1 - a["sq_err"] / max(total_var, 1e-30)),
    "cosine": float(a["cos"] / n),
    "cosine_robust": float(a["kept_cos"] / max(nk, 1.0)),
    "rel_recon_bias": float(a["sq_hat"] / max(a["dot"], 1e-30)),
    "mse_per_token": float(a["sq_err"] / n),
    "dense_latents": int(np.sum(rho > DENSE_LATENT)),
    "never_fired_eval": float(np.mean(rho == 0)),
  }, np.log10(rho + 1e-10)


def fidelity(x: np.ndarray, x_hat: np.ndarray, active: np.ndarray, chunk: int = 2048) -> dict:
  """The reconstruction metrics of reconstruction_metrics for any SAE's outputs on held-out rows:
  x, x_hat [N, D] (raw units), active [N, M] (codes > 0). Used to compare other trainers' SAEs
  (benchmarks/sae_quality.py) with the same definitions."""
  x = np.asarray(x, np.float32)
  keep = np.linalg.norm(x, axis=1) <= outlier_threshold(np.linalg.norm(x, axis=1))
  acc = None
  for s in range(0, len(x), chunk):
    part = _row_sums_jit(
      jnp.asarray(x[s : s + chunk]),
      jnp.asarray(x_hat[s : s + chunk], jnp.float32),
      jnp.asarray(active[s : s + chunk]),
      jnp.asarray(keep[s : s + chunk]),
    )
    part = {k: np.asarray(v, np.float64) for k, v in jax.device_get(part).items()}
    acc = part if acc is None else {k: acc[k] + part[k] for k in part}
  return _finish(acc, len(x))[0]


def reconstruction_metrics(
  arch, folded: dict, store, positions, row_start: int, n_rows: int, chunk: int = 2048
) -> tuple[list, np.ndarray]:
  """Per-layer reconstruction metrics over rows [row_start, row_start + n_rows) of the store; the
  `_robust` figures leave out the outlier rows (norm > OUTLIER_NORM_RATIO x the layer's median norm on
  these rows), whose count is `outlier_rows`."""
  stats = _chunk_stats(arch)
  n_layers = len(positions)
  spans = [(s, min(s + chunk, row_start + n_rows)) for s in range(row_start, row_start + n_rows, chunk)]
  norms = [[] for _ in range(n_layers)]  # first pass: the row norms that define the outliers
  for start, stop in spans:
    block = store.read(list(positions), start, stop).astype(np.float32)
    for i in range(n_layers):
      norms[i].append(np.linalg.norm(block[i], axis=1))
  norms = [np.concatenate(n) for n in norms]
  limits = [outlier_threshold(n) for n in norms]
  acc = [None] * n_layers
  with progress.Progress(len(spans) * n_layers, "held-out metrics", "layer-chunk") as bar:
    for start, stop in spans:
      block = store.read(list(positions), start, stop)
      for i in range(n_layers):
        p = {k: jnp.asarray(v[i]) for k, v in folded.items()}
        keep = norms[i][start - row_start : stop - row_start] <= limits[i]
        s = jax.device_get(stats(p, jnp.asarray(block[i]), jnp.asarray(keep)))
        s = {k: np.asarray(v, np.float64) for k, v in s.items()}
        acc[i] = s if acc[i] is None else {k: acc[i][k] + s[k] for k in s}
        bar.update(1)
  rows, log_density = [], []
  for i in range(n_layers):
    row, dens = _finish(acc[i], n_rows)
    rows.append(row)
    log_density.append(dens)
  return rows, np.stack(log_density).astype(np.float32)


_LOGIT_BYTES = 256 << 20


def splice_metrics(
  config, arch, folded: dict, store, layers, window_start: int, n_windows: int, batch: int = 8
) -> list:
  """Per-layer delta LM loss, CE-loss recovered, KL by splicing reconstructions into the model."""
  model = lm.load_model(config.model)
  if list(model.layers) != list(layers):
    raise ValueError(f"model layers {list(model.layers)} differ from the trained layers {list(layers)}")
  # Five [batch, T, vocab] float32 arrays are alive at once (logits, spliced, two log-softmaxes and an
  # exp): cap a batch's logits at _LOGIT_BYTES, which leaves SmolLM2's 8 x 128 x 49k as it is and runs
  # Gemma 3's 262k vocabulary two windows at a time.
  batch = max(1, min(batch, _LOGIT_BYTES // (store.meta["seq_len"] * model.vocab_size * 4)))

  @jax.jit
  def reconstruct(p, resid):  # resid [B, T, D] -> same with positions 1.. reconstructed / zeroed
    b, t, d = resid.shape
    _, x_hat = arch.encode_decode(p, resid.reshape(b * t, d))
    x_hat = x_hat.reshape(b, t, d)
    keep0 = (jnp.arange(t) == 0)[None, :, None]
    return jnp.where(keep0, resid, x_hat), jnp.where(keep0, resid, 0.0)

  @jax.jit
  def log_probs(logits):  # of the predictions made at positions 1..T-2 (targets ids[2..T-1])
    return jax.nn.log_softmax(logits[:, 1:-1].astype(jnp.float32), axis=-1)

  @jax.jit
  def ce_kl(lo, logits_new, ids):  # lo: log_probs of the original logits, made once per batch
    ln = log_probs(logits_new)
    tgt = ids[:, 2:]
    ce_o = -jnp.take_along_axis(lo, tgt[..., None], axis=-1)[..., 0]
    ce_n = -jnp.take_along_axis(ln, tgt[..., None], axis=-1)[..., 0]
    kl = jnp.sum(jnp.exp(lo) * (lo - ln), axis=-1)
    return jnp.sum(ce_o), jnp.sum(ce_n), jnp.sum(kl), ce_o.size

  n_layers = len(layers)
  sums = np.zeros((n_layers, 5))  # ce_orig, ce_spliced, ce_zero, kl_spliced, kl_zero
  count = 0
  ids_all = store.token_windows(window_start, window_start + n_windows)
  starts = range(0, len(ids_all), batch)
  with progress.Progress(len(starts) * n_layers, "splicing", "layer") as bar:
    for s in starts:
      ids = jnp.asarray(ids_all[s : s + batch], jnp.int32)
      mask = jnp.ones_like(ids)
      logits, resid = model.logits_and_residuals(ids, mask)
      lo = log_probs(logits)
      for i, layer in enumerate(layers):
        p = {k: jnp.asarray(v[i]) for k, v in folded.items()}
        spliced, zeroed = reconstruct(p, resid[i])
        ls = model.logits_with_replacement(ids, mask, int(layer), spliced)
        lz = model.logits_with_replacement(ids, mask, int(layer), zeroed)
        ce_o, ce_s, kl_s, n = jax.device_get(ce_kl(lo, ls, ids))
        _, ce_z, kl_z, _ = jax.device_get(ce_kl(lo, lz, ids))
        sums[i] += [ce_o, ce_s, ce_z, kl_s, kl_z]
        bar.update(1)
      count += int(n)
  rows = []
  for i in range(n_layers):
    ce_o, ce_s, ce_z, kl_s, kl_z = sums[i] / max(count, 1)
    rows.append(
      {
        "ce_tokens": count,
        "lm_loss": ce_o,
        "lm_loss_spliced": ce_s,
        "lm_loss_zero": ce_z,
        "delta_lm_loss": ce_s - ce_o,
        "ce_loss_recovered": (ce_z - ce_s) / (ce_z - ce_o) if ce_z != ce_o else float("nan"),
        "kl": kl_s,
        "kl_zero": kl_z,
        "kl_score": (kl_z - kl_s) / kl_z if kl_z else float("nan"),
      }
    )
  return rows


def evaluate(
  config,
  arch,
  final,
  store,
  *,
  layers,
  positions,
  eval_window_start: int,
  fired_ago,
  tokens_trained: int,
  tokens_per_epoch: int = 0,
) -> Report:
  """All metrics for every layer; `final` is train.stage.FinalSAEs."""
  t = config.sae_training
  rpw = store.rows_per_window
  row_start = eval_window_start * rpw
  n_rows = min(store.n_rows - row_start, int(t.eval_tokens))
  folded = {k: np.asarray(v) for k, v in common.fold_input_scale(final.params, final.input_scale).items()}
  rows, log_density = reconstruction_metrics(arch, folded, store, positions, row_start, n_rows)
  notes = [f"{n_rows} held-out evaluation tokens per layer (rows {row_start}..{row_start + n_rows - 1})"]
  fired_ago = np.asarray(fired_ago)
  dead = np.mean(fired_ago >= arch.dead_tokens, axis=1)
  if tokens_trained < arch.dead_tokens:
    notes.append(
      f"training saw {tokens_trained} tokens per layer, fewer than the dead window "
      f"({arch.dead_tokens}): no latent can be called dead; see silent_last_epoch (no "
      "firing during the whole last epoch) and never_fired_eval"
    )
  window = min(tokens_per_epoch or tokens_trained, arch.dead_cap)
  silent = np.mean(fired_ago >= window, axis=1) if window > 0 else np.zeros(len(layers))
  for i, layer in enumerate(layers):
    rows[i]["layer"] = int(layer)
    rows[i]["dead_fraction"] = float(dead[i])
    rows[i]["silent_last_epoch"] = float(silent[i])
    th = np.asarray(final.params["threshold"][i])
    rows[i].update(theta_mean=float(th.mean()), theta_min=float(th.min()), theta_max=float(th.max()))
  if t.eval_ce:
    n_windows = min(int(t.eval_windows), store.n_windows - eval_window_start)
    try:
      ce_rows = splice_metrics(
        config,
        arch,
        folded,
        store,
        layers,
        eval_window_start,
        n_windows,
        batch=int(config.extract.batch_size),
      )
      for r, c in zip(rows, ce_rows):
        r.update(c)
      notes.append(
        f"splicing metrics on {n_windows} held-out windows ({ce_rows[0]['ce_tokens']} predictions per layer)"
      )
    except DamagedOutputError:
      raise  # a damaged token chunk: the stage stops (naming it) rather than finish without these columns
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("CE-loss evaluation failed (%s); the table omits it", e)
      notes.append(f"splicing metrics not computed: {e}")
  hist = {
    int(layer): np.histogram(np.clip(log_density[i], -10, 0), bins=DENSITY_BINS)[0].tolist()
    for i, layer in enumerate(layers)
  }
  return Report(rows=rows, log_density=log_density, histograms=hist, notes=notes)


def _check(row: dict) -> dict:
  ok = {
    "l0": TARGETS["l0"][0] <= row["l0"] <= TARGETS["l0"][1],
    "dead_fraction": row["dead_fraction"] <= TARGETS["dead_fraction"],
  }
  if "fvu_robust" in row:  # tables written before the outlier split have FVU alone: not judged
    ok["fvu_robust"] = row["fvu_robust"] <= TARGETS["fvu_robust"]
  if "ce_loss_recovered" in row and np.isfinite(row["ce_loss_recovered"]):
    ok["ce_loss_recovered"] = row["ce_loss_recovered"] >= TARGETS["ce_loss_recovered"]
  return {k: bool(v) for k, v in ok.items()}  # numpy bools would fail `is False` and JSON


METRICS_JSON, METRICS_MD, HISTOGRAMS = "metrics.json", "metrics.md", "density_histograms.json"


def load_table(directory: str) -> dict:
  """metrics.json of a completed train stage (this module is its one owner): meta, targets, notes,
  summary and the per-layer rows under "layers"."""
  if not atomic_io.is_done(directory):
    raise IncompleteStoreError(
      f"no SAE quality report found in {directory} (train stage not complete): run --stages=train"
    )
  return atomic_io.read_json(os.path.join(directory, METRICS_JSON))


def write_tables(directory: str, report: Report, meta: dict) -> None:
  """results/<model>/sae/: metrics.json, metrics.md, density_histograms.json."""
  os.makedirs(directory, exist_ok=True)
  rows = [{**r, "meets_targets": _check(r)} for r in report.rows]
  keys = [
    "l0",
    "fvu",
    "fvu_robust",
    "outlier_rows",
    "cosine",
    "dead_fraction",
    "silent_last_epoch",
    "never_fired_eval",
    "delta_lm_loss",
    "ce_loss_recovered",
    "kl",
  ]
  summary = {}
  for k in keys:
    vals = np.asarray([r[k] for r in rows if k in r], np.float64)
    if len(vals):
      summary[k] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))}
  atomic_io.atomic_write_json(
    os.path.join(directory, METRICS_JSON),
    json.loads(
      json.dumps(
        {**meta, "targets": TARGETS, "notes": report.notes, "summary": summary, "layers": rows}, default=float
      )
    ),
  )
  atomic_io.atomic_write_json(
    os.path.join(directory, HISTOGRAMS), {"bins_log10": DENSITY_BINS.tolist(), "counts": report.histograms}
  )
  cols = [
    ("layer", "{:d}"),
    ("l0", "{:.1f}"),
    ("l0_std", "{:.1f}"),
    ("fvu", "{:.3f}"),
    ("fvu_robust", "{:.3f}"),
    ("outlier_rows", "{:d}"),
    ("cosine", "{:.3f}"),
    ("dead_fraction", "{:.3f}"),
    ("silent_last_epoch", "{:.3f}"),
    ("never_fired_eval", "{:.3f}"),
    ("dense_latents", "{:d}"),
    ("delta_lm_loss", "{:.3f}"),
    ("ce_loss_recovered", "{:.3f}"),
    ("kl", "{:.3f}"),
    ("theta_mean", "{:.4f}"),
  ]
  cols = [(c, f) for c, f in cols if any(c in r for r in rows)]
  lines = [f"# SAE quality: {meta.get('model')} ({meta.get('arch')}, width {meta.get('width')})", ""]
  lines += [
    f"- {k}: {meta[k]}"
    for k in ("steps", "tokens_per_layer", "train_seconds", "batch_size", "lr", "layout", "backward")
    if k in meta
  ]
  lines += [f"- {n}" for n in report.notes]
  lines += [
    f"- fvu_robust, cosine: without the outlier_rows (held-out rows whose norm is above "
    f"{OUTLIER_NORM_RATIO:g}x the layer's median row norm: massive-activation tokens); fvu counts every row",
    "- targets: L0 in [16, 128], FVU without outliers (fvu_robust) <= 0.25, dead <= 10%, CE-loss "
    "recovered >= 0.8 (a cell marked * misses its target)",
    "",
  ]
  lines.append("| " + " | ".join(c for c, _ in cols) + " |")
  lines.append("|" + "---|" * len(cols))
  for r in rows:
    cells = []
    for c, f in cols:
      v = r.get(c)
      if v is None or (isinstance(v, float) and not np.isfinite(v)):
        cells.append("-")
        continue
      cell = f.format(int(v)) if f == "{:d}" else f.format(v)
      if r["meets_targets"].get(c) is False:
        cell += "*"
      cells.append(cell)
    lines.append("| " + " | ".join(cells) + " |")
  atomic_io.atomic_write_text(os.path.join(directory, METRICS_MD), "\n".join(lines) + "\n")
