"""Looking inside a trained generator: attention maps, interpolation, truncation.

Attention maps follow the SAGAN paper's Figure 5: for a query pixel, the
softmax weights beta_{j,i} of G's self-attention layer over the (2x2
max-pooled) key positions, upsampled to the image and overlaid on it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Marker colours for up to 6 query points.
_COLOURS = np.array([[255, 0, 0], [0, 200, 0], [0, 90, 255], [255, 200, 0], [255, 0, 255],
                     [0, 220, 220]], np.uint8)


def truncated_z(key: jax.Array, n: int, z_dim: int, truncation: float | None) -> jax.Array:
  """N(0, I) noise, or the truncation trick's normal truncated to [-t, t]."""
  if truncation is None or truncation <= 0:
    return jax.random.normal(key, (n, z_dim))
  return jax.random.truncated_normal(key, -truncation, truncation, (n, z_dim))


def interpolate(z0: jax.Array, z1: jax.Array, steps: int) -> jax.Array:
  """[steps, ...] linear path from z0 to z1 (both ends included)."""
  t = jnp.linspace(0.0, 1.0, steps)[:, None]
  return (1.0 - t) * z0[None] + t * z1[None]


@functools.partial(jax.jit, static_argnums=0)
def generate_with_attention(generator, variables, z, labels):
  """(images in [-1, 1], {layer name: beta [B, N, N/4]}) from G in eval mode."""
  out, inter = generator.apply(variables, z, labels, train=False, mutable=["intermediates"])
  maps = {name: v["attention"][0] for name, v in inter.get("intermediates", {}).items()
          if name.startswith("attention")}
  return out, maps


def query_map(beta: np.ndarray, query: tuple[int, int], image_size: int) -> np.ndarray:
  """Attention of one query pixel over the image: [image_size, image_size] in [0, 1].

  beta: [N, N/4] for one image, N = r*r feature positions, keys on the
  (r/2 x r/2) pooled grid. query: (row, col) in image pixels.
  """
  n = beta.shape[0]
  r = int(round(np.sqrt(n)))
  qy = min(query[0] * r // image_size, r - 1)
  qx = min(query[1] * r // image_size, r - 1)
  keys = beta[qy * r + qx].reshape(r // 2, r // 2)
  up = image_size // (r // 2)
  m = np.kron(keys, np.ones((up, up), np.float32))
  return m / max(float(m.max()), 1e-12)


def overlay(image: np.ndarray, heat: np.ndarray, colour: np.ndarray, alpha: float = 0.6):
  """Blend a [0, 1] heat map in `colour` over a uint8 RGB image."""
  img = image.astype(np.float32)
  w = (alpha * heat)[..., None]
  return np.clip(img * (1 - w) + colour[None, None, :].astype(np.float32) * w, 0, 255).astype(
      np.uint8)


def mark(image: np.ndarray, query: tuple[int, int], colour: np.ndarray) -> np.ndarray:
  """A small square marker at the query pixel."""
  out = image.copy()
  h, w = out.shape[:2]
  s = h // 32  # a single pixel on small images
  y0, y1 = max(query[0] - s, 0), min(query[0] + s + 1, h)
  x0, x1 = max(query[1] - s, 0), min(query[1] + s + 1, w)
  out[y0:y1, x0:x1] = colour
  return out


def attention_sheet(imgs: np.ndarray, beta: np.ndarray, queries: list[tuple[int, int]]):
  """Rows per sample: [image with query markers, one overlay per query].

  imgs: uint8 [B, R, R, 3]; beta: [B, N, N/4]. Returns tiles [B*(1+Q), R, R, 3]
  to lay out with `images.make_grid(tiles, 1 + Q)`.
  """
  tiles = []
  size = imgs.shape[1]
  for b in range(len(imgs)):
    marked = imgs[b]
    for k, q in enumerate(queries):
      marked = mark(marked, q, _COLOURS[k % len(_COLOURS)])
    tiles.append(marked)
    for k, q in enumerate(queries):
      c = _COLOURS[k % len(_COLOURS)]
      tiles.append(mark(overlay(imgs[b], query_map(beta[b], q, size), c), q, c))
  return np.stack(tiles)


def default_queries(size: int) -> list[tuple[int, int]]:
  """Three query points spread over the image (as the paper's figure)."""
  return [(size // 4, size // 4), (size // 2, size // 2), (3 * size // 4, 3 * size // 4)]


def parse_queries(text: str, size: int) -> list[tuple[int, int]]:
  """'r1:c1,r2:c2' in pixels -> [(r, c), ...], checked against the image size."""
  out = []
  for part in text.split(","):
    r, c = (int(v) for v in part.split(":"))
    if not (0 <= r < size and 0 <= c < size):
      raise ValueError(f"query {r}:{c} outside the {size}x{size} image")
    out.append((r, c))
  return out

