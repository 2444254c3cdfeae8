"""Every stage's wall time beside its compute bound, for one config, measured in one run.

  .venv/bin/python -m benchmarks.pipeline --workdir=/tmp/gt_bench            # the offline default, fresh
  .venv/bin/python -m benchmarks.pipeline --config=configs/tiny.py:default --workdir=/tmp/gt_tiny_bench

Runs the stages in order in this process (ghosttrack_jax.pipeline, as `make run` does; stages already
complete in the workdir skip themselves and show as such), then measures this machine's fp32 matmul
rate at the shapes that bound each stage and divides the stage's FLOPs by it:
  extract   tokens x the forward's FLOPs per token (tools.planner.forward_flops), at the rate of the
            model's MLP matmul ([batch*seq, d] x [d, d_ff]);
  train     the loop: layer-tokens x 4*d*width (the encoder's forward and its dense weight gradient; a
            TopK step's only dense work), at the rate of the stacked encoder matmul; the evaluation:
            the held-out rows' encode and decode (4*d*width each) plus splicing, per layer one pass of
            the blocks after it and the head for the reconstruction and one for the zero ablation, plus
            one full pass per batch, at the MLP rate;
  answer    questions x (prompt + answer tokens) x the forward's FLOPs per token (prompt length from
            the answers written; greedy decoding's per-token steps are not compute bound on a CPU, so
            this is a floor);
  track     one teacher-forced pass per example and the SAE encode of its tokens on every layer;
  detect, evaluate, report: classifiers and bootstrap on a few hundred rows; no FLOP bound ("-").
A stage's wall time includes its start-up (model load, compilation) and its writes.
"""

import argparse
import json
import logging
import os
import sys
import time

from benchmarks import harness

REPO = harness.REPO


def run_stages(config, workdir: str, stages) -> dict:
  """{stage: wall seconds}, each stage run through the pipeline runner (so it checks its inputs)."""
  from ghosttrack_jax import pipeline  # noqa: PLC0415

  seconds = {}
  for name in stages:
    t0 = time.perf_counter()
    pipeline.run(config, workdir, stages=(name,))
    seconds[name] = time.perf_counter() - t0
  return seconds


def _answer_tokens(config, workdir: str) -> tuple[int, int]:
  """(questions answered, prompt + answer tokens over all of them) from the answer stage's output."""
  from ghosttrack_jax.answer import examples  # noqa: PLC0415

  table = examples.load_examples(config, workdir)
  return len(table), sum(len(e["prompt_ids"]) + len(e["answer_ids"]) for e in table)


def bounds(config, workdir: str) -> tuple[dict, dict]:
  """({stage: (FLOPs, rate GFLOP/s, what)}, the measured rates)."""
  from ghosttrack_jax.extract import store as store_lib  # noqa: PLC0415
  from ghosttrack_jax.runtime import paths  # noqa: PLC0415
  from ghosttrack_jax.tools import planner  # noqa: PLC0415

  a = planner.architecture(config.model)
  L = len(config.model.layers) or a.n_layers
  D, F, M = a.d_model, a.d_ff, int(config.sae.width)
  B, T = int(config.extract.batch_size), int(config.data.seq_len)
  t = config.sae_training
  mlp = harness.matmul_gflops(B * T, D, F)
  enc = harness.matmul_gflops(int(t.batch_size), D, M, batch=L)
  per_token = planner.forward_flops(a, B, T) / (B * T)
  head = 2 * D * a.vocab
  block = (per_token - head) / a.n_layers
  out = {}
  store = store_lib.ActivationStore.open(paths.for_config(config, workdir).hidden_states)
  out["extract"] = (store.n_windows * T * (per_token - head), mlp, "tokens x blocks' forward")
  n_eval_windows = max(1, int(round(t.eval_fraction * store.n_windows)))
  train_rows = (store.n_windows - n_eval_windows) * store.rows_per_window
  plan = planner_plan_steps(config, train_rows, store.chunk_rows)
  loop = plan * int(t.batch_size) * L * 4 * D * M
  eval_rows = min(store.n_rows - train_rows, int(t.eval_tokens))
  splice_tokens = min(int(t.eval_windows), n_eval_windows) * T
  after = sum(a.n_layers - 1 - layer for layer in (config.model.layers or range(a.n_layers)))
  splice = splice_tokens * (per_token + 2 * (after * block + L * head)) if t.eval_ce else 0.0
  # rate None: the first field is seconds (two parts at two rates)
  out["train"] = ((loop / enc + (eval_rows * L * 4 * D * M + splice) / mlp) / 1e9, None, "loop + evaluation")
  out["train (loop)"] = (loop, enc, "layer-tokens x 4*d*width")
  out["train (evaluation)"] = (eval_rows * L * 4 * D * M + splice, mlp, "held-out encode/decode + splicing")
  try:
    n_q, tokens = _answer_tokens(config, workdir)
  except Exception:  # pylint: disable=broad-except  (answers not written: no bound)
    n_q, tokens = 0, 0
  if tokens:
    out["answer"] = (tokens * per_token, mlp, f"{n_q} questions, {tokens:,} tokens x forward")
    out["track"] = (tokens * (per_token + L * 2 * D * M), mlp, "tokens x (forward + SAE encode)")
  return out, {"mlp": mlp, "encoder": enc}


def planner_plan_steps(config, train_rows: int, window_rows: int) -> int:
  from ghosttrack_jax.train import loop  # noqa: PLC0415

  return loop.data_plan(config, train_rows, window_rows).total_steps


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/smollm2_135m.py", help="path[:preset]")
  p.add_argument("--workdir", required=True)
  p.add_argument("--stages", default="extract,train,answer,track,detect,evaluate,report")
  p.add_argument("--json", default="", help="also write the figures to this file")
  p.add_argument("--set", action="append", default=[], help="config override, field=python literal")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  from ghosttrack_jax import config_lib  # noqa: PLC0415

  config = harness.load_config(args.config, args.set)
  stages = [s for s in config_lib.STAGES if s in args.stages.split(",")]
  config_lib.validate(config, stages)
  load0 = harness.load()
  t0 = time.perf_counter()
  seconds = run_stages(config, args.workdir, stages)
  total = time.perf_counter() - t0
  if "train" in seconds:  # the loop's own time, as the train stage records it
    from benchmarks import train_loop  # noqa: PLC0415
    from ghosttrack_jax.runtime import paths  # noqa: PLC0415
    from ghosttrack_jax.train import quality  # noqa: PLC0415

    results = paths.for_config(config, args.workdir).sae_results
    table = quality.load_table(results)
    seconds["train (loop)"] = float(table["train_seconds"])
    seconds["train (evaluation)"] = seconds["train"] - seconds["train (loop)"]
    per_step = int(config.sae_training.batch_size) * len(table["layers"])
    steady = train_loop.steady_rate(os.path.join(results, "train_log"), per_step)
  limits, rates = bounds(config, args.workdir)
  if "train" in seconds:  # layer-tokens/s at 4*d*width FLOPs each, at the stacked encoder's rate
    encoder_bound = rates["encoder"] * 1e9 / (4 * int(table["d_model"]) * int(table["width"]))
  rows = []
  for name in stages + ["train (loop)", "train (evaluation)"]:
    if name in limits:
      flops, rate, what = limits[name]
      bound_s = flops if rate is None else flops / (rate * 1e9)
    else:
      bound_s, what = None, "-"
    wall = seconds.get(name)
    rows.append((name, wall, bound_s, what))
  lines = [
    f"- command: `python -m benchmarks.pipeline {' '.join(sys.argv[1:] if argv is None else argv)}`",
    f"- machine: {harness.describe(load0)}",
    f"- measured fp32 matmul rates: MLP shape {rates['mlp']:.0f} GFLOP/s, stacked SAE encoder "
    f"{rates['encoder']:.0f} GFLOP/s; all stages {total:.0f} s",
  ]
  if "train" in seconds:
    lines.append(
      f"- train loop after its first step: {steady:,.0f} layer-tokens/s = {steady / encoder_bound:.0%} of "
      f"the encoder bound ({encoder_bound:,.0f} layer-tokens/s)"
    )
  lines += [
    "",
    "| stage | wall s | bound s | wall / bound | bound counts |",
    "|---|---|---|---|---|",
  ]
  for name, wall, bound_s, what in rows:
    w = f"{wall:.1f}" if wall is not None else "-"
    b = f"{bound_s:.1f}" if bound_s else "-"
    ratio = f"{wall / bound_s:.1f}x" if wall is not None and bound_s else "-"
    lines.append(f"| {name} | {w} | {b} | {ratio} | {what} |")
  text = "\n".join(lines)
  print(text)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"seconds": seconds, "rows": rows, "rates": rates, "load_start": load0}, f, indent=1)


if __name__ == "__main__":
  main()
