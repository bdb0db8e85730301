"""SAGAN ImageNet 128x128 as the released TF code (attention at 32x32 in G and D).

  python -m sagan_jax.main --config configs/imagenet128_official.py --workdir gs://BUCKET/run

Identical to configs/imagenet128.py except the attention placement, which
the paper's released code puts at the 32x32 feature maps. Trainable
parameters: G 42,078,852, D 39,463,618.
"""

import importlib.util
import os


def get_config():
  here = os.path.dirname(os.path.abspath(__file__))
  spec = importlib.util.spec_from_file_location("imagenet128", os.path.join(here, "imagenet128.py"))
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config()
  c.model.g_attention = (32,)  # released code: attention after G's 32x32 block
  c.model.d_attention = (32,)  # released code: attention after D's 32x32 block
  return c
