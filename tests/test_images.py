"""Image helpers: conversion, grids, PNG writing."""

import numpy as np
from PIL import Image

from sagan_jax import images


def test_to_uint8_maps_range():
  np.testing.assert_array_equal(images.to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])),
                                [0, 128, 255, 255])


def test_grid_layout_and_png_overwrite(tmp_path):
  tiles = np.stack([np.full((4, 4, 3), i * 40, np.uint8) for i in range(5)])
  grid = images.make_grid(tiles, ncol=3, pad=1)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
  np.testing.assert_array_equal(grid[6:10, 1:5], tiles[3])  # row 1, column 0
  path = str(tmp_path / "sub" / "g.png")
  images.save_png(path, grid)
  images.save_png(path, 255 - grid, scale=2)  # a rerun overwrites
  back = np.asarray(Image.open(path))
  assert back.shape == (2 * grid.shape[0], 2 * grid.shape[1], 3)
  np.testing.assert_array_equal(back[::2, ::2], 255 - grid)
  assert not any(p.name.endswith(".tmp") for p in (tmp_path / "sub").iterdir())
