"""GPT-2 medium (355M): 24 blocks, d_model 1024, SAE width 5120. Needs the hub or a local copy.

  python -m ghosttrack_jax.main --config=configs/gpt2_medium.py --workdir=runs/gpt2m        # users' numbers
  python -m ghosttrack_jax.main --config=configs/gpt2_medium.py:a100 --workdir=runs/gpt2m   # A100 preset

Numbers and presets are shared with GPT-2 small (configs/gpt2_small.py). On a 4-GPU node the 24 layers
train as 6 per device.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
  "gpt2_small_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_small.py")
)
_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_small)
PRESETS = _small.PRESETS


def get_config(arg=None):
  return _small.gpt2_config("medium", arg)
