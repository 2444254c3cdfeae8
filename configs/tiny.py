"""A 2-block random GPT-2 (d_model 64) for tests and smoke runs; runs end to end in about a minute.

python -m ghosttrack_jax.main --config=configs/tiny.py --workdir=/tmp/gt_tiny
"""

from ghosttrack_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.model.name = "tiny_gpt2"
  c.model.family = "gpt2"
  c.model.source = "random"  # randomly initialised, shape from c.model.random
  c.model.random.n_layer = 2  # blocks
  c.model.random.d_model = 64  # residual width
  c.model.random.n_head = 4  # heads
  c.data.seq_len = 32  # tokens per window
  c.data.n_tokens = 4_000  # tokens extracted
  c.extract.batch_size = 8  # sequences per forward pass
  c.extract.chunk_rows = 512  # rows per chunk
  c.sae.width = 256  # latents per layer
  c.sae.l0_warmup_steps = 50  # steps
  c.sae_training.batch_size = 256  # tokens per step
  c.sae_training.epochs = 2  # passes
  c.sae_training.lr_warmup_steps = 10  # steps
  c.sae_training.eval_fraction = 0.1  # held-out windows
  c.sae_training.eval_windows = 4  # windows for CE-loss recovered
  c.sae_training.checkpoint_every = 10  # steps
  c.sae_training.log_every = 5  # steps
  # Given-answer mode: a random model gets every own answer wrong, so the tiny pipeline teacher-forces
  # HaluEval's right and hallucinated reference answers to have both classes.
  c.qa.dataset = "halueval_given"  # dataset (see config_lib)
  c.qa.n_questions = 24  # questions (two examples each)
  c.qa.max_new_tokens = 6  # tokens
  c.qa.batch_size = 8  # prompts per batch
  c.tracking.top_k = 8  # features per layer
  c.evaluate.n_folds = 3  # folds
  c.evaluate.n_bootstrap = 100  # resamples
  return c
