"""GPT-2 small (124M): 12 blocks, d_model 768, SAE width 4096. Needs the hub or a local copy of `gpt2`.

  python -m ghosttrack_jax.main --config=configs/gpt2_small.py --workdir=runs/gpt2        # users' numbers
  python -m ghosttrack_jax.main --config=configs/gpt2_small.py:a100 --workdir=runs/gpt2   # A100 preset

On a 4-GPU node the 12 layers train as 3 per device. This file also holds what GPT-2 small and medium
share (configs/gpt2_medium.py loads it): our users' numbers for both sizes, and the GPU presets chosen
by the config argument, big_vision style:

"" (no argument): our users' runs: 10M tokens per layer, 20 epochs, extraction batch 32 (small) / 16
  (medium) sequences of 512 tokens, SAE batch 256 / 128 tokens. A step at batch 128-256 is bound by the
  optimizer's memory traffic, a few percent of a GPU's compute.
"a100": the same data and SAE recipe at SAE batch 4096, the JumpReLU recipe's own batch (Gemma Scope;
  its learning rate 7e-5 is the base config's); the warm-ups (learning rate, L0 coefficient, BatchTopK
  threshold start) keep the same number of tokens, i.e. are divided by the batch ratio; checkpoints and
  logs every 2,000 and 100 steps (tens of seconds on a GPU); extraction batches twice as large.
`--plan` compares the presets of the config file and says which to pick.
"""

import os

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError

PRESETS = ("", "a100")  # config arguments: "" = our users' numbers

SIZES = {
  # name, hub id, extraction batch (sequences), SAE width, SAE batch (tokens), tracking batch (texts)
  "small": ("gpt2_small", "gpt2", 32, 4096, 256, 32),
  "medium": ("gpt2_medium", "gpt2-medium", 16, 5120, 128, 16),
}
GPU_BATCH = 4096  # SAE tokens per step per layer on a GPU preset


def gpt2_config(size: str, arg=None):
  """The config of GPT-2 `size` ("small" or "medium") with preset `arg` (one of PRESETS)."""
  name, source, extract_batch, width, train_batch, tracking_batch = SIZES[size]
  preset = arg or ""
  if preset not in PRESETS:
    config_file = os.path.join("configs", f"gpt2_{size}.py")
    raise ConfigError(
      f"unknown preset {preset!r} for {config_file}: use one of {list(PRESETS)} "
      f"(e.g. --config={config_file}:a100; none for our users' numbers)"
    )
  c = config_lib.base_config()
  c.model.name = name
  c.model.family = "gpt2"
  c.model.source = source  # hub id or a local directory holding the HF checkpoint
  c.data.seq_len = 512  # tokens per window
  c.data.n_tokens = 10_000_000  # tokens per layer (all layers come from the same pass)
  c.extract.batch_size = extract_batch  # sequences per forward pass
  c.sae.width = width  # latents per layer
  c.sae_training.batch_size = train_batch  # tokens per step per layer
  c.sae_training.epochs = 20  # passes over the stored rows
  c.sae_training.lr_warmup_steps = 1_000  # steps
  c.sae.l0_warmup_steps = 10_000  # steps
  c.sae_training.checkpoint_every = 5_000  # steps
  c.sae_training.log_every = 500  # steps
  c.sae_training.eval_windows = 64  # held-out windows for CE-loss recovered
  # BIG-bench qa_wikidata, 20 per relation (1,042 questions): a base model completes the stem itself
  # (NQ-open, the original's set, stays available: --config.qa.dataset=nq_open, prompt fewshot).
  c.qa.dataset = "wikidata"
  c.qa.n_questions = 0  # all of the capped sample
  c.qa.prompt_style = "auto"  # wikidata: stem completion; other sets: few-shot "Q: ... A:"
  c.tracking.batch_size = tracking_batch  # texts per forward pass
  if preset == "a100":
    ratio = GPU_BATCH / train_batch  # 16 (small) or 32 (medium) times fewer steps
    c.sae_training.batch_size = GPU_BATCH  # tokens per step per layer
    c.sae_training.lr_warmup_steps = round(c.sae_training.lr_warmup_steps / ratio)  # steps, same tokens
    c.sae.l0_warmup_steps = round(c.sae.l0_warmup_steps / ratio)  # steps, same tokens
    c.sae.batchtopk_threshold_start = round(c.sae.batchtopk_threshold_start / ratio)  # steps
    c.sae_training.checkpoint_every = 2_000  # steps
    c.sae_training.log_every = 100  # steps
    c.extract.batch_size = 2 * extract_batch  # sequences per forward pass
    c.sae_training.gather_threads = 3  # of the 8 CPUs per GPU process the sbatch asks for
  return c


def get_config(arg=None):
  return gpt2_config("small", arg)
