"""A 2-block random model for tests and smoke runs; each preset runs end to end in about a minute.

  python -m ghosttrack_jax.main --config=configs/tiny.py --workdir=/tmp/gt_tiny
  python -m ghosttrack_jax.main --config=configs/tiny.py:default --workdir=/tmp/gt_tiny_default

`configs/tiny.py`: a random GPT-2 (d_model 64) on HaluEval's given answers (both classes from a random
model). `configs/tiny.py:default`: the same sizes with every code-path setting of configs/smollm2_135m.py
(random Llama with the SmolLM2 chat-template tokenizer, own answers to NQ-open with the chat prompt,
calibrated birth thresholds, b_dec subtraction, data-dependent threshold init, sparse backward with its
capacity, learning-rate decay, ...), so the test suite runs what `make run` runs. Only the fields of
config_lib.VALUE_ONLY_FIELDS (sizes, counts, rates, seeds, names, input paths) and model.source differ.
"""

import importlib.util
import os

from ghosttrack_jax import config_lib


def _tiny():
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


def _tiny_default():
  spec = importlib.util.spec_from_file_location(
    "smollm2_135m_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_135m.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c, tiny = module.get_config(), _tiny()
  for field in config_lib.VALUE_ONLY_FIELDS:  # the tiny sizes; every other field stays the default's
    *parents, leaf = field.split(".")
    node, src = c, tiny
    for p in parents:
      node, src = node[p], src[p]
    node[leaf] = src[leaf]
  c.model.name = "tiny_default"
  c.model.source = "random"  # a random Llama of c.model.random's shape, with the bundled SmolLM2 tokenizer
  c.qa.n_questions = 32  # questions of the default set the model answers itself (one example each)
  return c


def get_config(arg=None):
  if not arg:
    return _tiny()
  if arg == "default":
    return _tiny_default()
  raise ValueError(f"configs/tiny.py has the presets '' and 'default', not {arg!r}")
