"""Image helpers: uint8 <-> [-1, 1] floats, grids, PNG files."""

from __future__ import annotations

import io

import numpy as np
from etils import epath
from PIL import Image


def normalize(x):
  """uint8 [0, 255] -> float32 [-1, 1] (a jax or numpy array; on device inside the step)."""
  return x.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
  """Images in [-1, 1] -> uint8 [0, 255] (numpy)."""
  x = np.asarray(x, dtype=np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncol: int, pad: int = 2) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 image of rows of `ncol` tiles."""
  n, h, w, c = images.shape
  nrow = -(-n // ncol)
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def display_scale(resolution: int) -> int:
  """The nearest-neighbour PNG upscale that shows `resolution`-px tiles at about 128 px."""
  return max(1, 128 // resolution)


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
  """Writes a uint8 [H, W, 3] array as PNG, local or gs:// (nearest upscale by `scale`)."""
  img = Image.fromarray(image)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(buf.getvalue())
  tmp.replace(path)  # atomic, and overwrites an existing file
