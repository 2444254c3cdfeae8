"""GPT-2 small (124M): 12 blocks, d_model 768, SAE width 4096. Needs the hub or a local copy of `gpt2`.

  python -m ghosttrack_jax.main --config=configs/gpt2_small.py --workdir=runs/gpt2

Numbers follow our users' runs: 10M tokens per layer, 20 epochs, extraction batch 32 sequences,
SAE training batch 256 tokens. On a 4-GPU node the 12 layers train as 3 per device.
"""

from ghosttrack_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.model.name = "gpt2_small"
  c.model.family = "gpt2"
  c.model.source = "gpt2"  # hub id or a local directory holding the HF checkpoint
  c.data.seq_len = 512  # tokens per window
  c.data.n_tokens = 10_000_000  # tokens per layer (all layers come from the same pass)
  c.extract.batch_size = 32  # sequences per forward pass
  c.sae.width = 4096  # latents per layer (5.33x d_model)
  c.sae_training.batch_size = 256  # tokens per step per layer
  c.sae_training.epochs = 20  # passes over the stored rows
  c.sae_training.lr_warmup_steps = 1_000  # steps
  c.sae.l0_warmup_steps = 10_000  # steps
  c.sae_training.checkpoint_every = 5_000  # steps
  c.sae_training.log_every = 500  # steps
  c.sae_training.eval_windows = 64  # held-out windows for CE-loss recovered
  c.qa.n_questions = 0  # all 3,610 NQ-open dev questions
  c.qa.prompt_style = "fewshot"  # base model: few-shot "Q: ... A:" prompt
  c.tracking.batch_size = 32  # texts per forward pass
  return c
