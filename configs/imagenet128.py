"""SAGAN on ImageNet 128x128, as the paper's headline model (FID 18.65, IS 52.52).

  python -m sagan_jax.main --config configs/imagenet128.py --workdir gs://BUCKET/sagan128 \
      --config.data.dir=gs://BUCKET/tensorflow_datasets
  python -m sagan_jax.main --config configs/imagenet128.py:official --workdir gs://BUCKET/run

Self-attention at the 64x64 feature map in G and D ("feat64"). Trainable
parameters: G 42,017,412, D 39,448,258. The paper trained ~1M iterations at
batch 256 on 4 GPUs; expect FID near 18.65 there (mmgen reports 12.83 with
EMA weights). Needs ImageNet prepared for TFDS (docs/data.md) and an
accelerator.

The paper's setting is `config_base.base_config()` itself (this file
changes only the dtype and the grid schedule): 128x128, ch 64, z 128, 1,000
classes, batch 256, 1M iterations, Adam (0, 0.9) at G 1e-4 / D 4e-4, EMA
0.9999 from step 2,000, hinge loss, TFDS `imagenet2012` with flips.

Variant `:official` is the released TF code's placement, attention at the
32x32 feature maps in G and D, otherwise identical: G 42,078,852,
D 39,463,618 trainable parameters.

The paper's experiments (sagan_jax/experiments.py; docs/experiments.md):
`:baseline`, `:sn_gd`, `:sn_gd_ttur` (= the default), `:sngan` (Figure 3
and the SN-GAN recipe), `:noattn`, `:feat8` ... `:feat64` and `:residual8`
... `:residual64` (Table 1), e.g.

  python -m sagan_jax.sweep --config configs/imagenet128.py \
      --variants baseline,sn_gd,sn_gd_ttur --seeds 0 --workdir gs://BUCKET/fig3

The single learning rate of baseline / sn_gd / sngan is 1e-4 for G and D,
the paper's G rate (Zhang et al. 2019, Sec. 5.1: Figure 3's models without
TTUR use one rate for both, with 1:1 updates).
"""

from sagan_jax import config_base, experiments

SINGLE_LR = 1e-4   # baseline / sn_gd / sngan: one rate for G and D (the paper's G rate)
VARIANTS = ("", "official") + experiments.names(128)


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise config_base.ConfigError(f"configs/imagenet128.py:{variant}: unknown variant; "
                                  f"use one of {[v for v in VARIANTS if v]} or none")
  c = config_base.base_config()   # the paper's model: every field at its default but these
  c.model.dtype = "bfloat16"  # accelerator default; SN, softmax, losses stay float32
  c.sample_every = 5000       # PNG grids as often as checkpoints
  if variant == "official":
    c.model.g_attention = (32,)  # released code: attention after G's 32x32 block
    c.model.d_attention = (32,)  # released code: attention after D's 32x32 block
  elif variant:
    experiments.apply(c, variant, SINGLE_LR, "configs/imagenet128.py")
  return c
