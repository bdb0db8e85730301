"""The embedded default: class-conditional SAGAN on scikit-learn's digits.

  python -m sagan_jax.main --config configs/digits.py --workdir runs/digits

No download (the 1,797 8x8 digits ship with scikit-learn), upscaled to
16x16. Expect about 10 minutes on a 2-core laptop CPU; sample grids appear in
runs/digits/samples/ (one row per class). By the end, a classifier trained
on real digits recognises the conditioned class in >90% of EMA samples
(printed as `eval at step ...: accuracy ...` every 500 steps).
"""

from sagan_jax import config_base


def get_config():
  c = config_base.base_config()
  c.total_steps = 1500        # ~10 minutes on 2 CPU cores (0.38 s/step)
  c.batch_size = 64           # global batch
  c.log_every = 100           # console/TensorBoard scalars
  c.sample_every = 500        # PNG grids in WORKDIR/samples
  c.checkpoint_every = 500    # Orbax checkpoints (and one at the end)
  c.keep_checkpoints = 2      # recent checkpoints kept
  c.eval_every = 500          # digits classifier score of 1,000 EMA samples (best kept)
  c.model.resolution = 16     # digits upscaled 8 -> 16
  c.model.ch = 16             # G/D blocks are 4*ch = 64 channels wide
  c.model.z_dim = 128         # as the paper
  c.model.num_classes = 10    # digits 0-9
  c.model.g_attention = (8,)  # self-attention after G's 8x8 block
  c.model.d_attention = (8,)  # self-attention after D's first (8x8) block
  c.ema.decay = 0.995         # ~200-step horizon: a short run moves fast
  c.ema.start_step = 1000     # average only once G makes digits (averaging the
                              # early, fast-changing weights gives poor samples)
  c.data.source = "digits"    # embedded data
  c.data.random_flip = False  # mirrored digits are not digits
  return c
