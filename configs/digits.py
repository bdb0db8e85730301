"""The embedded default: class-conditional SAGAN on scikit-learn's digits.

  sagan-jax train --config digits --workdir runs/digits
  (the same: python -m sagan_jax.main --config configs/digits.py --workdir runs/digits)

No download (the 1,797 8x8 digits ship with scikit-learn), upscaled to 16x16;
training splits the batch over two CPU devices, one per core. Expect about 6
minutes for the whole command on a 2-core AMD EPYC Zen 3 with jax 0.10.2
(measured 5 min 49 s: 1,250 steps at 0.21-0.25 s, plus start-up, compilation
and evaluations); faster CPU kinds (Intel Sapphire Rapids, AMD Zen 5) take
less. Sample grids appear in runs/digits/samples/ (one row per class); `eval at
step ...` lines at steps 500, 1,000 and 1,250 score 1,000 EMA samples with a
classifier trained on real digits. Measured on AMD EPYC Zen 3: accuracy 0.47,
0.98, 0.992 with jax 0.10.2 (Python 3.11) and 0.35, 0.954, 0.986 with jax 0.12
(Python 3.12); at the end every class >= 0.96 and within-class variety 0.74 of
the real digits' (jax 0.10.2; `sagan-jax evaluate --workdir runs/digits
--num_samples 1000 --digits_score --noinception` gives the same).
"""

from sagan_jax import config_base


def get_config():
  c = config_base.base_config()
  c.total_steps = 1250        # at 1,000 accuracy is 0.98 but variety 0.70: 1,250 for margin
  c.batch_size = 32           # global batch: 16 per core; 0.57x the time of 64 per step
  c.log_every = 100           # console/TensorBoard scalars
  c.sample_every = 250        # PNG grids in WORKDIR/samples (cheap once compiled)
  c.checkpoint_every = 500    # Orbax checkpoints (and one at the end)
  c.keep_checkpoints = 2      # recent checkpoints kept
  c.eval_every = 500          # digits classifier score of 1,000 EMA samples (and at the end)
  c.model.resolution = 16     # digits upscaled 8 -> 16
  c.model.ch = 16             # G/D blocks are 4*ch = 64 channels wide
  c.model.z_dim = 128         # as the paper
  c.model.num_classes = 10    # digits 0-9
  c.model.g_attention = (8,)  # self-attention after G's 8x8 block
  c.model.d_attention = (8,)  # self-attention after D's first (8x8) block
  c.optim.g_lr = 2e-4         # twice the paper's: a short run must learn fast
  c.optim.d_lr = 8e-4         # TTUR 4:1 as the paper; a strong D keeps samples varied
  c.ema.decay = 0.99          # ~100-step horizon: a short run moves fast
  c.ema.start_step = 750      # average only once G makes digits (averaging the
                              # early, fast-changing weights gives poor samples)
  c.data.source = "digits"    # embedded data
  c.data.random_flip = False  # mirrored digits are not digits
  return c
