"""SAGAN on ImageNet 128x128, as the paper's headline model (FID 18.65, IS 52.52).

  python -m sagan_jax.main --config configs/imagenet128.py --workdir gs://BUCKET/sagan128 \
      --config.data.dir=gs://BUCKET/tensorflow_datasets
  python -m sagan_jax.main --config configs/imagenet128.py:official --workdir gs://BUCKET/run

Self-attention at the 64x64 feature map in G and D ("feat64"). Trainable
parameters: G 42,017,412, D 39,448,258. The paper trained ~1M iterations at
batch 256 on 4 GPUs; expect FID near 18.65 there (mmgen reports 12.83 with
EMA weights). Needs ImageNet prepared for TFDS (docs/data.md) and an
accelerator.

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
  c = config_base.base_config()
  c.total_steps = 1_000_000   # the paper's ~1M iterations
  c.batch_size = 256          # the paper's batch
  c.log_every = 100           # scalars every 100 iterations
  c.sample_every = 5000       # PNG grids
  c.checkpoint_every = 5000   # Orbax checkpoints
  c.keep_checkpoints = 3      # recent checkpoints kept
  c.model.resolution = 128    # ImageNet 128x128
  c.model.ch = 64             # paper's width
  c.model.z_dim = 128         # paper's latent
  c.model.num_classes = 1000  # ImageNet classes
  c.model.g_attention = (64,)  # paper: attention at feat64 in G
  c.model.d_attention = (64,)  # paper: attention at feat64 in D
  c.model.dtype = "bfloat16"  # accelerator default; SN, softmax, losses stay float32
  c.ema.decay = 0.9999        # EMA of G
  c.ema.start_step = 2000     # EMA starts here
  c.data.source = "tfds"      # TFDS pipeline
  c.data.name = "imagenet2012"  # manual download, see docs/data.md
  c.data.random_flip = True   # horizontal flips
  if variant == "official":
    c.model.g_attention = (32,)  # released code: attention after G's 32x32 block
    c.model.d_attention = (32,)  # released code: attention after D's 32x32 block
  elif variant:
    experiments.apply(c, variant, SINGLE_LR, "configs/imagenet128.py")
  return c
