r"""Class-conditional SAGAN on CIFAR-10 (32x32) from TFDS, StudioGAN's recipe.

  python -m sagan_jax.data.prepare cifar10   # once, needs internet (~160 MB)
  python -m sagan_jax.main --config configs/cifar10.py --workdir runs/cifar10

Expect: StudioGAN reports FID 10.35 / IS 8.64 for SAGAN on CIFAR-10 with
these settings (hinge loss, batch 64, 5 D steps per G step, 100k G steps,
attention at 16x16 in G and D, D blocks 128 wide and G blocks 256 as in
its 32x32 tables); that number is theirs (PyTorch), not yet
reproduced with this code. 100k steps x 6 passes is an accelerator job
(hours on one GPU/TPU chip); on a CPU use it only for a few steps.
A StudioGAN CIFAR-10 SAGAN checkpoint converts with this config
(docs/pretrained.md).
"""

from sagan_jax import config_base


def get_config():
  c = config_base.base_config()
  c.data.name = "cifar10"         # TFDS dataset (source 'tfds' is the default)
  c.data.shuffle_buffer = 50_000  # the whole training set (small encoded PNGs)
  c.model.resolution = 32         # CIFAR's native size: images pass unresized
  c.model.num_classes = 10        # CIFAR-10 classes
  c.model.d_ch = 32               # D blocks 128 wide: StudioGAN's 32x32 D is 2 x d_conv_dim 64
  c.model.g_attention = (16,)     # after G's second block (StudioGAN attn_g_loc [2])
  c.model.d_attention = (16,)     # after D's first block (StudioGAN attn_d_loc [1])
  c.batch_size = 64               # StudioGAN's CIFAR batch
  c.optim.g_lr = 2e-4             # StudioGAN default (no TTUR on CIFAR)
  c.optim.d_lr = 2e-4             # StudioGAN default
  c.optim.beta1 = 0.5             # StudioGAN default
  c.optim.n_critic = 5            # D steps per G step (StudioGAN default)
  c.total_steps = 100_000         # G steps
  return c
