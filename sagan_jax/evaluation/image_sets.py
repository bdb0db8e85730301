"""Image sets for evaluation: .npz files of uint8 images (and labels), and dataset splits.

Every mistake in a file is a `errors.ConfigError` naming the file and what to
change (the `evaluate` command prints it as one `error:` line).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from sagan_jax import errors


def open_npz(path: str, what: str):
  """np.load of an .npz, or ConfigError saying why it cannot be read."""
  try:
    return np.load(path)
  except FileNotFoundError:
    raise errors.ConfigError(f"{what} {path}: no such file") from None
  except (OSError, ValueError, EOFError) as e:
    raise errors.ConfigError(f"{what} {path}: not a readable .npz file ({e})") from None


def checked_uint8(images: np.ndarray, what: str) -> np.ndarray:
  """`images` as uint8 [N, H, W, 3]; ConfigError for another shape, floats or values
  outside [0, 255] (integers in range are accepted and converted)."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.ConfigError(f"{what}: 'images' must be [N, H, W, 3] (RGB), got {images.shape}")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.integer):
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    raise errors.ConfigError(
        f"{what}: 'images' must be uint8 in [0, 255], got {images.dtype} in [{lo:.3g}, "
        f"{hi:.3g}]; from [-1, 1] floats use np.round((x + 1) * 127.5).astype(np.uint8)")
  if images.size and (images.min() < 0 or images.max() > 255):
    raise errors.ConfigError(f"{what}: 'images' values must be in [0, 255], got "
                             f"[{images.min()}, {images.max()}] ({images.dtype})")
  return images.astype(np.uint8)


def load_images(path: str, what: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8 images [N, H, W, 3], int labels [N] or None) of an .npz, checked."""
  with open_npz(path, what) as f:
    if "images" not in f.files:
      raise errors.ConfigError(f"{what} {path}: needs an array 'images' [N, H, W, 3] "
                               f"(has {f.files})")
    images = f["images"]
    labels = f["labels"] if "labels" in f.files else None
  images = checked_uint8(images, f"{what} {path}")
  if labels is not None:
    labels = np.asarray(labels).reshape(-1) if np.ndim(labels) else labels
    if np.ndim(labels) != 1 or labels.shape[0] != images.shape[0]:
      raise errors.ConfigError(f"{what} {path}: {np.size(labels)} 'labels' for "
                               f"{images.shape[0]} 'images'; give one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
      raise errors.ConfigError(f"{what} {path}: 'labels' must be integers, got {labels.dtype}")
  return images, labels


def take(images, labels, num: int):
  """The first `num` images (and labels)."""
  if num < images.shape[0]:
    images = images[:num]
    labels = None if labels is None else labels[:num]
  return images, labels


def _batch_images(batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
  """The images (and labels) of one dataset batch: a dict, a tuple, or an array."""
  if isinstance(batch, dict):
    for key in ("image", "images"):
      if key in batch:
        return np.asarray(batch[key]), batch.get("label")
    raise ValueError(f"dataset batch has no 'image' key: {sorted(batch)}")
  if isinstance(batch, (tuple, list)):
    return np.asarray(batch[0]), (batch[1] if len(batch) > 1 else None)
  return np.asarray(batch), None


def _to_uint8(images: np.ndarray) -> np.ndarray:
  if images.dtype == np.uint8:
    return images
  # The iterator's float convention is [-1, 1] (as the models use).
  return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dataset_split(config, split: str, batch_size: int, num: int
                  ) -> tuple[Iterator[np.ndarray] | np.ndarray, list, str]:
  """(images: array or iterator of uint8 batches, a list the labels are appended to, a
  description) of `num` images of a config's dataset split.

  The embedded digits have one set (1,797 images, `split` 'train'); the
  tf.data sources go through `data.pipeline.make_eval_iterator`.
  """
  source = config.data.source
  if source == "digits":
    errors.check_flag(split == "train", "split", split,
                      "the embedded digits have one set: use --split=train")
    from sagan_jax.data import digits
    images, labels = take(*digits.load(config.model.resolution), num)
    return images, [labels], f"dataset digits ({config.model.resolution}px)"
  from sagan_jax.data.pipeline import make_eval_iterator
  labels: list = []

  def batches():
    for batch in make_eval_iterator(config, split, batch_size, num):
      images, lab = _batch_images(batch)
      if lab is not None:
        labels.append(np.asarray(lab).reshape(-1))
      yield _to_uint8(images)

  name = {"tfds": f"tfds:{config.data.name}", "folder": f"folder {config.data.dir}"}.get(
      source, source)
  return batches(), labels, f"dataset {name} split {split} ({config.model.resolution}px)"
