"""The `train` stage: one SAE per layer, all layers stacked and trained together (docs/DESIGN.md).

  train.stage.run(config, workdir)           # stage entry point (idempotent, resumable)
  saes = sae.trained.load_trained_saes(config, workdir)

Trains (train.loop) on the training windows of the activation store, then evaluates on the held-out
windows (train.quality), exports every layer in SAELens format (sae.export), writes the per-layer table
in results/<model>/sae/, then DONE.
"""

import dataclasses
import logging
import os

import jax
import numpy as np

from ghosttrack_jax.errors import IncompleteStoreError
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.lm import families, shapes
from ghosttrack_jax.runtime import atomic_io, paths, writer
from ghosttrack_jax.sae import export, registry
from ghosttrack_jax.train import loop, quality
from ghosttrack_jax.train import step as train_step


def run(config, workdir: str) -> None:
  """The `train` stage: train (or resume), evaluate, export, write the per-layer table, then DONE."""

  mp = paths.for_config(config, workdir)
  if atomic_io.is_done(mp.sae_results):
    logging.info("train: %s is complete, skipping (delete it to retrain)", mp.sae_results)
    return
  store = store_lib.ActivationStore.open(
    mp.hidden_states, expect={"model": config.model.name}, verify_reads=bool(config.sae_training.verify_reads)
  )
  layers = store.layers
  positions = list(range(len(layers)))
  rows_per_window = store.rows_per_window
  n_eval_windows = max(1, int(round(config.sae_training.eval_fraction * store.n_windows)))
  n_train_windows = store.n_windows - n_eval_windows
  if n_train_windows <= 0:
    raise IncompleteStoreError(
      f"the store at {mp.hidden_states} has {store.n_windows} windows, too few "
      "to hold out evaluation windows: extract more tokens"
    )
  n_train_rows = n_train_windows * rows_per_window
  chunk_rows = int(store.activations.chunk_layout.read_chunk.shape[1])
  result = loop.train(
    config,
    store,
    layers=layers,
    layer_positions=positions,
    n_train_rows=n_train_rows,
    window_rows=chunk_rows,
    mean_sq_norms=store.mean_sq_norm(),
    ckpt_dir=os.path.join(mp.checkpoints, "train_state"),
    log_dir=os.path.join(mp.sae_results, "train_log"),
  )
  if jax.process_index() != 0:  # several processes: process 0 alone evaluates and writes the outputs
    return
  arch = registry.from_config(config, store.d_model)
  final = finalize_params(arch, result.state)
  report = quality.evaluate(
    config,
    arch,
    final,
    store,
    layers=layers,
    positions=positions,
    eval_window_start=n_train_windows,
    fired_ago=result.state.fired_ago,
    tokens_trained=result.tokens_per_layer,
    tokens_per_epoch=result.tokens_per_layer // int(config.sae_training.epochs),
  )
  # Held-out metrics at the final step (rows of an earlier try that was killed before DONE are replaced).
  replaces = lambda row: any(k.startswith("eval/") for k in row)
  log_dir = os.path.join(mp.sae_results, "train_log")
  run_config = writer.config_dict(config)
  with writer.MetricWriter(
    log_dir, replaces=replaces, logging_cfg=config.logging, run_config=run_config
  ) as w:
    scalars = {}
    for row in report.rows:
      for key, value in row.items():
        if key != "layer" and isinstance(value, (int, float)) and not isinstance(value, bool):
          scalars[f"eval/layer_{row['layer']:02d}/{key}"] = value
    w.write_scalars(result.steps, scalars)
    for i, layer in enumerate(layers):
      w.write_histogram(result.steps, f"eval/layer_{layer:02d}/log10_density", report.log_density[i])
  export.write_all(
    mp.sae_export,
    arch,
    final,
    layers=layers,
    model_name=shapes.hub_id(config.model),
    context_size=int(store.meta.get("seq_len", 0)),
    prepend_bos=families.FAMILIES[config.model.family].window_bos,
    sparsity=report.log_density,
    # No wall time in the export: its files are hashed into the SAE manifest hash that every later output
    # records, which must be the same for the same SAEs (the time is in results/<model>/sae/metrics.json).
    extra={
      # config.sae.k (TopK's latents per token) has been recorded for every architecture since the
      # first exports; kept so that an unchanged run exports the same bytes (the manifest hash).
      "k": int(config.sae.k),
      "training": {
        "steps": result.steps,
        "tokens_per_layer": result.tokens_per_layer,
        "layout": result.layout,
        "backward": result.sparse_backend,
      },
      "model_source": config.model.source,  # e.g. a quantized GGUF: the weights the SAEs were trained on
    },
  )
  quality.write_tables(
    mp.sae_results,
    report,
    meta={
      "model": config.model.name,
      "arch": arch.name,
      "width": arch.width,
      "d_model": arch.d_model,
      "steps": result.steps,
      "tokens_per_layer": result.tokens_per_layer,
      "train_seconds": round(result.seconds, 1),
      "layout": result.layout,
      "backward": result.sparse_backend,
      "batch_size": int(config.sae_training.batch_size),
      "lr": train_step.peak_lr(config, arch),
      "config": loop.jsonable(loop.fingerprint(config, arch.d_model, layers)),
    },
  )
  digest = manifest_hash(mp.sae_export, layers)
  atomic_io.write_done(mp.sae_export, {"layers": layers, "sha256": digest})
  atomic_io.write_done(mp.sae_results, {"layers": layers, "arch": arch.name, "sae_manifest_hash": digest})


@dataclasses.dataclass
class FinalSAEs:
  """Trained parameters in training units (not folded) plus what inference needs."""

  params: dict  # stacked [L, ...] numpy, threshold = inference threshold
  input_scale: np.ndarray  # [L]


def finalize_params(arch, state: train_step.TrainState) -> FinalSAEs:
  """Training state -> inference parameters (Architecture.inference_params: e.g. BatchTopK's theta
  becomes theta_glob for every latent)."""
  params = {k: np.asarray(v, np.float32) for k, v in state.params.items()}
  params = arch.inference_params(params, state.batch_threshold)
  return FinalSAEs(params=params, input_scale=np.asarray(state.input_scale, np.float32))


def manifest_hash(export_dir: str, layers) -> str:
  """SHA-256 over every exported layer's cfg.json and weights: identifies the SAEs later stages used."""
  return atomic_io.files_sha256(
    [
      os.path.join(export.layer_dir(export_dir, layer), name)
      for layer in layers
      for name in (export.CFG, export.WEIGHTS)
    ]
  )
