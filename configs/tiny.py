"""A few-second model for tests and smoke runs (digits at 16x16, ch 16).

  python -m sagan_jax.main --config configs/tiny.py --workdir /tmp/tiny

Expect: 20 steps in well under a minute on a laptop CPU; noise-like samples.
It exercises every part (attention in G and D, CBN, projection, EMA,
checkpoints), not quality. Variants: the paper's experiments
(sagan_jax/experiments.py) at this size, for tests of the sweep runner.
"""

from sagan_jax import config_base, experiments


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.total_steps = 20         # a smoke run
  c.batch_size = 8           # global batch
  c.log_every = 5            # log often
  c.sample_every = 0         # one grid at the end
  c.checkpoint_every = 10    # two checkpoints
  c.keep_checkpoints = 2     # keep both
  c.model.resolution = 16    # smallest table
  c.model.ch = 16            # narrow (G/D blocks 64 channels)
  c.model.z_dim = 32         # small latent
  c.model.num_classes = 10   # digits classes
  c.model.g_attention = (8,)  # attention after G's 8x8 block
  c.model.d_attention = (8,)  # attention after D's first block
  c.model.sn_init_iters = 5  # cheap warm-up
  c.ema.start_step = 5       # exercise the EMA decay path
  c.ema.decay = 0.9          # fast EMA for short runs
  c.data.source = "digits"   # embedded data, no download
  c.data.random_flip = False  # digits must not be mirrored
  if variant:
    experiments.apply(c, variant, c.optim.g_lr, "configs/tiny.py")  # single rate: G's
  return c
