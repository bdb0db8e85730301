"""PyTorch SAGAN checkpoints -> sagan_jax runs, without torch (`python -m sagan_jax.convert`).

  common.py          torch layouts -> ours, spectral-norm state, Adam state, the
                     consume-every-tensor bookkeeping
  mapping.py         the walk over our G and D in model order (`ModelMap`)
  biggan_pytorch.py  BigGAN-PyTorch's SAGAN: file names, key names, settings
  studiogan.py       PyTorch-StudioGAN's SAGAN (resnet backbone, v0.3 and v0.4+ names)
  build.py           folder -> TrainState -> run directory
  __main__.py        the command line

docs/pretrained.md says how to convert each published checkpoint.
"""
