"""The language-model layer: `load_model(config.model) -> LanguageModel` (docs/DESIGN.md, "Model interface").

model = lm.load_model(config.model)
resid = model.residuals(ids, mask)                          # [L, B, T, D] float32 raw block outputs
logits, resid = model.logits_and_residuals(ids, mask)
logits = model.logits_with_replacement(ids, mask, layer, new_resid)
gens = model.generate(prompts, max_new_tokens=24, batch_size=16)
"""

from ghosttrack_jax.lm.generation import Generation
from ghosttrack_jax.lm.loading import load_model
from ghosttrack_jax.lm.model import LanguageModel

__all__ = ["Generation", "LanguageModel", "load_model"]
