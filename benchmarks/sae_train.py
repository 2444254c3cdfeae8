"""SAE training-step throughput: our JAX step (sparse and dense backward) beside a plain PyTorch step
and SAELens's own training step, same shape, same machine, same run; plus the fraction of the measured
matmul peak.

  .venv/bin/python -m benchmarks.sae_train                      # GPT-2-small shape: 768 -> 4096, batch 4096
  .venv/bin/python -m benchmarks.sae_train --append             # ... and append to benchmarks/RESULTS.md
  .venv/bin/python -m benchmarks.sae_train --no-reference       # ours only (no PyTorch environment)

The references run in their own environment, `.venv-bench-sae`, created on first use with
  python3 -m venv .venv-bench-sae && .venv-bench-sae/bin/pip install torch==2.13.0 sae-lens==6.54.12
(or pass --ref-python to use another interpreter that has torch and sae_lens).

What is timed (fp32, one optimizer step on a resident batch, best of --steps after one warm-up):
  ours      train.step.make_block_step on a 1-layer stack, exactly the trainer's step: encoder, loss,
            custom-VJP backward, decoder-gradient projection, clip, Adam, renormalisation, dead
            counters. "sparse" is the COO path (C++ kernels on CPU); "dense" the reference path.
            JumpReLU is measured with per-latent thresholds set so that L0 is about --l0 (the cost of
            the sparse path scales with L0; a fresh JumpReLU has L0 ~ width/2 and runs dense until
            its thresholds rise); TopK with k = --k.
  torch     the same step written plainly in PyTorch (dense, custom autograd STE for JumpReLU).
  sae_lens  SAELens's JumpReLUTrainingSAE / TopKTrainingSAE `training_forward_pass` + backward + grad
            clip + Adam step, i.e. SAETrainer._train_step without data loading or logging.
Peak: the best fp32 GFLOP/s of the encoder-shaped matmul [batch, d] x [d, width] in each framework.
A dense step costs 12*d*width FLOPs per token (forward 4, backward 8); "dense-equivalent" fractions
use that count; the sparse step actually executes about 2*d*width + 8*d*L0 per token.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from benchmarks import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_VENV = os.path.join(REPO, ".venv-bench-sae")
REF_PKGS = ["torch==2.13.0", "sae-lens==6.54.12"]


# ---- ours ------------------------------------------------------------------------------------------


def jax_peak(b, d, m, repeats=8):
  import jax  # pylint: disable=import-outside-toplevel

  x = jax.random.normal(jax.random.PRNGKey(0), (b, d))
  w = jax.random.normal(jax.random.PRNGKey(1), (d, m))
  f = jax.jit(lambda a, c: a @ c)
  f(x, w).block_until_ready()
  best = min(_timed(lambda: f(x, w).block_until_ready()) for _ in range(repeats))
  return 2 * b * d * m / best / 1e9


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def ours(arch, sparse, b, d, m, l0, k, steps, x_np, outlier_norm_ratio=0.0, encoder_init_scale=1.0, aux_k=0):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from ghosttrack_jax.sae import kernels, registry  # pylint: disable=import-outside-toplevel
  from ghosttrack_jax.train import step as sae_train  # pylint: disable=import-outside-toplevel

  cap = (2 * l0 if arch == "jumprelu" else 2 * k) if sparse else 0
  h = registry.build(
    arch,
    d_model=d,
    width=m,
    k=k,
    sparse_capacity=cap,
    bandwidth=1e-3,
    threshold_init=1e-3,
    l0_coefficient=1e-2,
    l0_warmup_steps=1,
    outlier_norm_ratio=outlier_norm_ratio,
    encoder_init_scale=encoder_init_scale,
    aux_k=aux_k,
  )
  s = sae_train.Settings(
    lr=7e-5,
    warmup_steps=10,
    decay_fraction=0.0,
    total_steps=10_000,
    steps_per_epoch=10_000,
    epochs=1,
    grad_clip=1.0,
    batch_size=b,
  )
  tx = sae_train.make_optimizer(h, s)
  state = jax.jit(jax.vmap(lambda key: sae_train.init_state(key, h, tx, 1.0)))(
    jax.random.split(jax.random.PRNGKey(0), 1)
  )
  x = jnp.asarray(x_np)[None]
  if arch == "jumprelu":  # thresholds at the (1 - l0/width) quantile of each latent: L0 ~ l0
    pre = x[0] @ state.params["W_enc"][0] + state.params["b_enc"][0]
    theta = jnp.quantile(pre, 1 - l0 / m, axis=0)
    state = state.replace(params={**state.params, "threshold": theta[None]})
  # aux_k > 0 (TopK): the AuxK variant every step, as the trainer runs it once some latent is dead
  aux = "on" if arch == "topk" and aux_k > 0 else "switch"
  step = jax.jit(sae_train.make_block_step(h, s, tx, aux=aux), donate_argnums=0)
  t0 = time.perf_counter()
  state, metrics = step(state, x)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, x)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  m_host = jax.device_get(metrics)
  best = min(times)
  return {
    "name": f"ours {arch} {'sparse' if sparse else 'dense'}",
    "arch": arch,
    "tokens_per_s": b / best,
    "ms_per_step": 1e3 * best,
    "median_ms": 1e3 * float(np.median(times)),
    "first_call_s": first,
    "l0": float(m_host["l0"][0]),
    "sparse_path": float(m_host["sparse_path"][0]),
    "capacity": cap,
    "backend": kernels.backend() if sparse else "dense",
  }


# ---- references (PyTorch, SAELens) in their own environment ---------------------------------------

REF_SCRIPT = textwrap.dedent(r"""
import json, os, sys, time
import numpy as np

from benchmarks import harness
import torch
torch.set_num_threads(os.cpu_count())
cfg = json.loads(sys.argv[1])
b, d, m, k, l0, steps = cfg["b"], cfg["d"], cfg["m"], cfg["k"], cfg["l0"], cfg["steps"]
x = torch.from_numpy(np.load(cfg["x_path"]))
out = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "results": []}

def timed(step):
    step()
    ts = []
    for _ in range(steps):
        t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))

a = torch.randn(b, d); w = torch.randn(d, m)
a @ w
out["peak_gflops"] = max(2 * b * d * m / min(timed(lambda: a @ w)) / 1e9 for _ in range(2))

EPS = 1e-3
def rect(u):
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)
class JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta)
    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        return g * (pre > theta), (g * (-theta / EPS) * rect((pre - theta) / EPS)).sum(0)
class Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)
    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        return None, (g * (-1.0 / EPS) * rect((pre - theta) / EPS)).sum(0)

def plain(arch):
    w_dec = torch.nn.init.kaiming_uniform_(torch.empty(m, d))
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": w_dec.T.clone(), "b_enc": torch.zeros(m), "W_dec": w_dec.clone(), "b_dec": torch.zeros(d),
         "theta": torch.zeros(m)}
    if arch == "jumprelu":
        p["theta"] = torch.quantile(x @ p["W_enc"], 1 - l0 / m, dim=0)
    params = [torch.nn.Parameter(v) for v in p.values()]
    W_enc, b_enc, W_dec, b_dec, theta = params
    if arch == "jumprelu":
        opt = torch.optim.Adam(params, lr=7e-5, betas=(0.0, 0.999), eps=1e-8)
    else:
        opt = torch.optim.Adam(params[:4], lr=7e-5, betas=(0.9, 0.999), eps=6.25e-10)
    def step():
        if arch == "jumprelu":
            pre = x @ W_enc + b_enc
            f = JumpReLU.apply(pre, theta)
            x_hat = f @ W_dec + b_dec
            loss = ((x - x_hat) ** 2).sum(-1).mean() + 1e-2 * Step.apply(pre, theta).sum(-1).mean()
        else:
            pre = (x - b_dec) @ W_enc + b_enc
            vals, idx = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
            x_hat = f @ W_dec + b_dec
            loss = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
            theta.clamp_(min=0)
    return step

def saelens(arch, sparse_acts=False):
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    if arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=d, d_sae=m, dtype="float32", device="cpu", jumprelu_init_threshold=1e-3,
            jumprelu_bandwidth=1e-3, l0_coefficient=1e-2))
        coeffs = {"l0": 1e-2}
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k, dtype="float32", device="cpu",
                                                    use_sparse_activations=sparse_acts))
        coeffs = {}
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.9, 0.999))
    state = {"n": 0, "since_fired": torch.zeros(m), "l0": 0.0}
    def step():
        sae.train()
        o = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs,
                                                     dead_neuron_mask=state["since_fired"] > 1e9,
                                                     n_training_steps=state["n"], is_logging_step=False))
        with torch.no_grad():
            fired = o.feature_acts.bool().float()
            did_fire = fired.sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            state["since_fired"] += 1
            state["since_fired"][did_fire] = 0
            state["l0"] = float(fired.sum(-1).mean()) if not fired.is_sparse else float(fired.to_dense().sum(-1).mean())
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        state["n"] += 1
    return step, state

import sae_lens
out["sae_lens_version"] = sae_lens.__version__
for arch in ("jumprelu", "topk"):
    best, med = timed(plain(arch))
    out["results"].append({"name": f"torch {arch} dense", "arch": arch, "tokens_per_s": b / best,
                           "ms_per_step": 1e3 * best, "median_ms": 1e3 * med})
for arch, sparse_acts in (("jumprelu", False), ("topk", False), ("topk", True)):
    name = f"sae_lens {arch}" + (" use_sparse_activations" if sparse_acts else "")
    try:
        step, state = saelens(arch, sparse_acts)
        best, med = timed(step)
    except Exception as e:  # the optional sparse-activations mode may not support backward here
        out.setdefault("failed", []).append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        continue
    out["results"].append({"name": name, "arch": arch, "tokens_per_s": b / best, "ms_per_step": 1e3 * best,
                           "median_ms": 1e3 * med, "l0": state["l0"]})
print("RESULT_JSON " + json.dumps(out))
""")


def ensure_ref_python(path: str | None) -> str:
  if path:
    return path
  py = os.path.join(REF_VENV, "bin", "python")
  if not os.path.exists(py):
    print(f"creating {REF_VENV} ({' '.join(REF_PKGS)}) ...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", REF_VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *REF_PKGS], check=True)
  return py


def references(py, b, d, m, k, l0, steps, x_path):
  cfg = {"b": b, "d": d, "m": m, "k": k, "l0": l0, "steps": steps, "x_path": x_path}
  proc = subprocess.run(
    [py, "-c", REF_SCRIPT, json.dumps(cfg)],
    capture_output=True,
    text=True,
    check=False,
    env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
  )
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT_JSON ")]
  if proc.returncode or not line:
    raise RuntimeError(f"reference run failed ({proc.returncode}):\n{proc.stderr[:3000]}")
  return json.loads(line[-1][len("RESULT_JSON ") :])


# ---- report ----------------------------------------------------------------------------------------


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--width", type=int, default=4096)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--l0", type=int, default=64, help="JumpReLU L0 the thresholds are set to")
  p.add_argument("--k", type=int, default=32, help="TopK k")
  p.add_argument("--steps", type=int, default=5, help="timed steps per variant (best is reported)")
  p.add_argument(
    "--outlier-norm-ratio", type=float, default=0.0, help="ours: sae.outlier_norm_ratio (0 = no row weights)"
  )
  p.add_argument("--encoder-init-scale", type=float, default=1.0, help="ours: sae.encoder_init_scale")
  p.add_argument("--aux-k", type=int, default=0, help="ours TopK: time the AuxK variant with this k_aux")
  p.add_argument("--no-reference", action="store_true")
  p.add_argument("--no-dense", action="store_true", help="skip our dense reference path")
  p.add_argument("--ref-python", default=None)
  p.add_argument("--append", action="store_true", help="append the result to benchmarks/RESULTS.md")
  args = p.parse_args(argv)
  b, d, m = args.batch, args.d, args.width
  x = (np.random.default_rng(0).standard_normal((b, d)) / np.sqrt(d)).astype(np.float32)
  load0 = os.getloadavg()
  peak = jax_peak(b, d, m)
  rows = []
  for arch in ("jumprelu", "topk"):
    recipe = (args.outlier_norm_ratio, args.encoder_init_scale, args.aux_k)
    rows.append(ours(arch, True, b, d, m, args.l0, args.k, args.steps, x, *recipe))
    if not args.no_dense:
      rows.append(ours(arch, False, b, d, m, args.l0, args.k, args.steps, x, *recipe))
  ref = None
  if not args.no_reference:
    with tempfile.TemporaryDirectory() as tmp:
      x_path = os.path.join(tmp, "x.npy")
      np.save(x_path, x)
      ref = references(ensure_ref_python(args.ref_python), b, d, m, args.k, args.l0, args.steps, x_path)
    rows += ref["results"]
  peak2 = jax_peak(b, d, m)  # again at the end: the machine is shared, take the better
  peak = max(peak, peak2)
  load1 = os.getloadavg()
  dense_flops = 12 * d * m
  lines = []
  sl = {r["arch"]: r["tokens_per_s"] for r in rows if r["name"] in ("sae_lens jumprelu", "sae_lens topk")}
  for r in rows:
    ratio = f"{r['tokens_per_s'] / sl[r['arch']]:.2f}x SAELens" if r["arch"] in sl else ""
    eq = r["tokens_per_s"] * dense_flops / 1e9
    peak_ref = ref["peak_gflops"] if r["name"].startswith(("torch", "sae_lens")) and ref else peak
    extra = f", L0 {r['l0']:.1f}" if "l0" in r else ""
    if r["name"].startswith("ours") and "sparse" in r["name"]:
      executed = r["tokens_per_s"] * (2 * d * m + 8 * d * r["l0"]) / 1e9
      extra += (
        f", executed {executed:.0f} GFLOP/s = {executed / peak:.2f} of peak, "
        f"sparse path {r['sparse_path']:.0f}, {r['backend']}"
      )
    lines.append(
      f"- {r['name']:<36} {r['tokens_per_s']:>9,.0f} tokens/s  ({r['ms_per_step']:.0f} ms/step, "
      f"median {r['median_ms']:.0f}); dense-equivalent {eq:.0f} GFLOP/s = {eq / peak_ref:.2f} of "
      f"peak{extra}  {ratio}"
    )
  import jax  # pylint: disable=import-outside-toplevel

  head = [
    f"## SAE training step (benchmarks/sae_train.py), {datetime.date.today().isoformat()}",
    "",
    f"- command: `python -m benchmarks.sae_train {' '.join(sys.argv[1:])}`".rstrip(),
    f"- machine: {harness.cpu_name()}, {os.cpu_count()} visible cores (shared; load average "
    f"{load0[0]:.1f} at start, {load1[0]:.1f} at end), jax {jax.__version__} on "
    f"{jax.default_backend()}"
    + (
      f", torch {ref['torch_version']} ({ref['threads']} threads), sae_lens {ref['sae_lens_version']}"
      if ref
      else ""
    ),
    f"- commit: {harness.commit()}",
    f"- shape: d={d} -> width={m}, batch {b} tokens, fp32; JumpReLU thresholds set for L0~{args.l0}, "
    f"TopK k={args.k}; best of {args.steps} steps after a warm-up; ours with outlier_norm_ratio "
    f"{args.outlier_norm_ratio:g}, encoder_init_scale {args.encoder_init_scale:g}"
    + (f", TopK with AuxK (k_aux {args.aux_k}) in every step" if args.aux_k else ""),
    f"- measured fp32 matmul peak ([{b},{d}]x[{d},{m}]): JAX {peak:.0f} GFLOP/s"
    + (f", PyTorch {ref['peak_gflops']:.0f} GFLOP/s" if ref else ""),
    f"- dense step = 12*d*width = {dense_flops / 1e6:.1f} MFLOP/token",
    "",
  ]
  if ref and ref.get("failed"):
    lines += [f"- not measured: {f}" for f in ref["failed"]]
  text = "\n".join(head + lines) + "\n"
  print(text)
  if args.append:
    path = os.path.join(REPO, "benchmarks", "RESULTS.md")
    with open(path, "a", encoding="utf-8") as f:
      f.write("\n" + text)


if __name__ == "__main__":
  main()
