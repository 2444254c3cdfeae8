"""GPT-2 small (124M): 12 blocks, d_model 768, SAE width 4096. Needs the hub or a local copy of `gpt2`.

  python -m ghosttrack_jax.main --config=configs/gpt2_small.py --workdir=runs/gpt2        # users' numbers
  python -m ghosttrack_jax.main --config=configs/gpt2_small.py:a100 --workdir=runs/gpt2   # A100 preset

Numbers and presets: configs/gpt2_common.py. On a 4-GPU node the 12 layers train as 3 per device.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
  "gpt2_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_common.py")
)
gpt2_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpt2_common)
PRESETS = gpt2_common.PRESETS


def get_config(arg=None):
  return gpt2_common.get_config("small", arg)
