"""GPT-2 medium (355M): 24 blocks, d_model 1024, SAE width 5120. Needs the hub or a local copy.

  python -m ghosttrack_jax.main --config=configs/gpt2_medium.py --workdir=runs/gpt2m

Numbers follow our users' runs: 10M tokens per layer, 20 epochs, extraction batch 16 sequences,
SAE training batch 128 tokens. On a 4-GPU node the 24 layers train as 6 per device.
"""

from ghosttrack_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.model.name = "gpt2_medium"
  c.model.family = "gpt2"
  c.model.source = "gpt2-medium"  # hub id or a local directory holding the HF checkpoint
  c.data.seq_len = 512  # tokens per window
  c.data.n_tokens = 10_000_000  # tokens per layer (all layers come from the same pass)
  c.extract.batch_size = 16  # sequences per forward pass
  c.sae.width = 5120  # latents per layer (5x d_model)
  c.sae_training.batch_size = 128  # tokens per step per layer
  c.sae_training.epochs = 20  # passes over the stored rows
  c.sae.l0_warmup_steps = 10_000  # steps
  c.sae_training.checkpoint_every = 5_000  # steps
  c.sae_training.log_every = 500  # steps
  c.sae_training.eval_windows = 64  # held-out windows for CE-loss recovered
  c.qa.n_questions = 0  # all 3,610 NQ-open dev questions
  c.qa.prompt_style = "fewshot"  # base model: few-shot "Q: ... A:" prompt
  c.tracking.batch_size = 16  # texts per forward pass
  return c
