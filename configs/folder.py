r"""SAGAN on your own images: a folder with one subfolder of images per class.

  python -m sagan_jax.main --config configs/folder.py --workdir runs/folder \
      --config.data.dir=PATH [--config.model.num_classes=K]

PATH holds PATH/<class>/<image> (or tfds.ImageFolder's PATH/train/<class>/<image>),
local or gs://; JPEG, PNG, GIF, BMP or WebP of any size, gray or RGBA included
(see docs/data.md). Unconditional by default, so any folder works; for a
class-conditional model set K = the number of class subfolders (a wrong K
stops at start-up with the value to set). 128x128 with attention at 64x64 as
the paper; --config.model.resolution takes 16, 32, 64, 128 or 256 (images are
resized to it), with attention at a feature-map size of that model, e.g. for
64x64 add --config.model.resolution=64 --config.model.g_attention='(32,)'
--config.model.d_attention='(32,)' (a wrong size stops with the allowed ones).

Expect: PNG grids in runs/folder/samples every 1000 steps and checkpoints
every 5000 (resume by rerunning). This is an accelerator job (128x128, ch 64:
~160 GFLOP per image per iteration); quality depends on the data and was not
measured for this config. Undecodable files are skipped with a warning.

Variants (docs/own_data.md walks through both):
  configs/folder.py:small     a few hundred images: DiffAugment's three ops on
                              everything D sees, their probability steered by
                              ADA's controller from 0, fewer steps
  configs/folder.py:finetune  start from a trained run, --config.init_from=RUN_DIR
                              (required), D's first two blocks frozen (FreezeD)
"""

from sagan_jax import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.data.source = "folder"    # class-subfolder tree at --config.data.dir (required)
  c.model.num_classes = 0     # unconditional; K class subfolders -> --config.model.num_classes=K
  c.batch_size = 64           # smaller than ImageNet's 256: folders are usually small
  c.total_steps = 100_000     # a tenth of the ImageNet schedule
  if variant in ("small", "finetune"):
    c.augment.policy = "color,translation,cutout"  # D must not memorise a small set
    c.augment.p = 0.0         # ADA starts without augmentation ...
    c.augment.ada_target = 0.6  # ... and raises p while D is too sure of the reals (the ADA paper's target)
    c.augment.ada_kimg = 100  # p can move by 1 in ~1,600 of the 20,000 steps (docs/own_data.md)
    c.total_steps = 20_000    # a few hundred images: more steps mostly overfit
    c.checkpoint_every = 2000  # and keep the better ones
  if variant == "finetune":
    c.freeze_d_blocks = 2     # FreezeD: D's first two blocks keep the source run's features
    c.total_steps = 10_000    # fine-tuning converges faster than training from scratch
  elif variant not in ("", "small"):
    raise ValueError(f"unknown variant {variant!r}; use '', 'small' or 'finetune'")
  return c
