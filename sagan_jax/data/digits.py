"""The embedded default data: scikit-learn's digits (1,797 8x8 images, 10 classes).

Ships with scikit-learn, so nothing is downloaded. Images are upscaled
(bilinear) to the model resolution and stored as white-on-black uint8 RGB
(pixel value = ink * 255 / 16). The stream is a pure function of
(seed, global sample index): batch k of the run holds samples k*B .. k*B+B-1
of an endless sequence of seeded epoch permutations, and process p of P
takes its contiguous 1/P of each global batch. So a resumed run continues
the exact sequence, and a run over several processes sees the same global
batches as a single process. `config.data.classes` / `examples_per_class`
pick the images first (`subset`); the stream then runs over those.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from sagan_jax.data import subset
from sagan_jax.data.source import DataSpec, Source, local_batch_size

NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def load(resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """All digits as uint8 [1797, R, R, 3] and int32 labels [1797]."""
  from sklearn.datasets import load_digits
  d = load_digits()
  ink = (d.images.astype(np.float32) * (255.0 / 16.0))
  out = np.empty((len(ink), resolution, resolution), np.uint8)
  for i, img in enumerate(ink):
    pil = Image.fromarray(img, mode="F").resize((resolution, resolution), Image.BILINEAR)
    out[i] = np.clip(np.round(np.asarray(pil)), 0, 255).astype(np.uint8)
  rgb = np.repeat(out[..., None], 3, axis=-1)
  return rgb, d.target.astype(np.int32)


def sample_indices(seed: int, n: int, start: int, count: int) -> np.ndarray:
  """Dataset indices of global samples start .. start+count-1."""
  g = np.arange(start, start + count)
  epochs, pos = np.divmod(g, n)
  out = np.empty(count, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(n)
    sel = epochs == e
    out[sel] = perm[pos[sel]]
  return out


def make_source(spec: DataSpec, *, process_index: int = 0, process_count: int = 1,
                start_batch: int = 0) -> Source:
  """The endless digits stream of `spec` (see the module docstring); process p's share."""
  res = spec.resolution
  imgs, labels = load(res)
  num_classes = NUM_CLASSES
  if subset.active(spec.data):
    keep, labels = subset.select(labels, NUM_CLASSES, spec.data, "the digits data")
    imgs, num_classes = imgs[keep], subset.num_classes(spec.data, NUM_CLASSES)
  gbs = spec.batch_size
  lbs = local_batch_size(gbs, process_count)
  seed = spec.seed

  def gen():
    k = start_batch
    while True:
      idx = sample_indices(seed, len(imgs), k * gbs + process_index * lbs, lbs)
      yield {"image": imgs[idx], "label": labels[idx]}
      k += 1

  return Source(gen(), num_classes, res, "digits")
