"""The embedded digits source: content, determinism, resume and process sharding."""

import numpy as np
import pytest

from sagan_jax import data
from sagan_jax.data import digits
from tests.conftest import load_config


def test_images_are_upscaled_digits():
  imgs, labels = digits.load(16)
  assert imgs.shape == (1797, 16, 16, 3) and imgs.dtype == np.uint8
  assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
  from sklearn.datasets import load_digits
  d = load_digits()
  # Area-downsampling the 16x16 image back to 8x8 recovers the original ink.
  back = imgs[..., 0].reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4)) * 16 / 255
  assert np.corrcoef(back.ravel(), d.images.ravel())[0, 1] > 0.95
  np.testing.assert_array_equal(imgs[..., 0], imgs[..., 2])  # grey in RGB


def test_batches_have_interface_shape():
  c = load_config("digits")
  src = data.make_source(c)
  assert src.num_classes == 10 and src.resolution == 16
  b = next(src)
  n = c.batch_size  # the config's global batch (32), one process
  assert b["image"].shape == (n, 16, 16, 3) and b["image"].dtype == np.uint8
  assert b["label"].shape == (n,) and b["label"].dtype == np.int32


def test_resume_continues_the_same_stream():
  c = load_config("tiny")
  full = data.make_source(c)
  seq = [next(full) for _ in range(300)]  # > one epoch at batch 8 (1797 images)
  resumed = data.make_source(c, start_batch=250)
  for k in range(250, 300):
    b = next(resumed)
    np.testing.assert_array_equal(b["label"], seq[k]["label"])
    np.testing.assert_array_equal(b["image"], seq[k]["image"])


def test_each_epoch_is_a_permutation():
  idx = digits.sample_indices(seed=3, n=1797, start=0, count=2 * 1797)
  assert sorted(idx[:1797].tolist()) == list(range(1797))
  assert sorted(idx[1797:].tolist()) == list(range(1797))
  assert not np.array_equal(idx[:1797], idx[1797:])  # reshuffled per epoch


def test_two_processes_split_the_global_batch():
  c = load_config("tiny")
  single = data.make_source(c)
  p0 = data.make_source(c, process_index=0, process_count=2)
  p1 = data.make_source(c, process_index=1, process_count=2)
  for _ in range(5):
    g, a, b = next(single), next(p0), next(p1)
    np.testing.assert_array_equal(np.concatenate([a["label"], b["label"]]), g["label"])
    np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), g["image"])


def test_batch_not_divisible_by_processes():
  c = load_config("tiny")
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    data.make_source(c, process_count=3)
