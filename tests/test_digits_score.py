"""The digits demo's cheap independent score: calibration on real, collapsed and mislabelled sets."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sagan_jax.evaluation import digits_score as ds


def _real(resolution=32, method="bilinear"):
  """All 1,797 real digits at `resolution`, white on black uint8 RGB."""
  from PIL import Image
  from sklearn.datasets import load_digits
  d = load_digits()
  ink = d.images.astype(np.float32) * (255.0 / 16.0)
  if method == "nearest":
    k = resolution // 8
    out = np.repeat(np.repeat(ink, k, axis=1), k, axis=2)
  else:
    out = np.stack([np.asarray(Image.fromarray(im, mode="F").resize(
        (resolution, resolution), Image.BILINEAR)) for im in ink])
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  return np.repeat(out[..., None], 3, axis=-1), d.target.astype(np.int32)


def _per_class(images, labels, n=100):
  idx = np.concatenate([np.where(labels == c)[0][:n] for c in range(10)])
  return images[idx], labels[idx]


def test_classifier_trains_deterministically():
  x, y = ds._real_digits()
  t = time.perf_counter()
  a = ds.train_classifier(x, y)
  print(f"digits classifier trained in {time.perf_counter() - t:.2f} s")  # timing: not asserted
  b = ds.train_classifier(x, y)
  for wa, wb in zip(a.coefs_, b.coefs_):
    np.testing.assert_array_equal(wa, wb)


def test_classifier_generalises():
  """Held out: trained on 70% of the digits it recognises > 95% of the rest."""
  x, y = ds._real_digits()
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(y))
  tr, te = perm[:1258], perm[1258:]
  clf = ds.train_classifier(x[tr], y[tr])
  assert (clf.predict(x[te] / 16.0) == y[te]).mean() > 0.95


def test_real_digits_score_high_with_full_variety():
  images, labels = _per_class(*_real(32))   # 1,000 samples, 100 per class
  s = ds.digits_score(images, labels)
  assert s["num_samples"] == 1000
  assert s["accuracy"] > 0.95
  assert all(a > 0.85 for a in s["per_class_accuracy"])
  assert 0.9 < s["diversity"] < 1.1
  assert s["frechet"] < 1.0


def test_reference_choice_calibrates_frechet_and_diversity():
  images, labels = _real(32)
  # The full training set against itself (auto reference = the demo's data): exact.
  s = ds.digits_score(images, labels)
  assert s["frechet"] < 1e-6 and abs(s["diversity"] - 1.0) < 1e-9
  s = ds.digits_score(images, labels, reference=(images, labels))
  assert s["frechet"] < 1e-6 and abs(s["diversity"] - 1.0) < 1e-9
  # The reference itself: precision = recall = coverage = 1 in the classifier's space.
  assert s["precision"] == s["recall"] == s["coverage"] == 1.0 and s["density"] > 0.9
  # Against the raw 8x8 digits the bilinear round trip's blur shows.
  raw = ds.digits_score(images, labels, reference=None)
  assert raw["accuracy"] == s["accuracy"]
  assert 0.5 < raw["diversity"] < 0.9 and raw["frechet"] > 1.0
  # Nearest-neighbour upsampling is exactly invertible: raw reference matches.
  near, near_labels = _real(32, "nearest")
  n = ds.digits_score(near, near_labels, reference=None)
  assert n["accuracy"] == 1.0 and abs(n["diversity"] - 1.0) < 0.01 and n["frechet"] < 1e-3


def test_mode_collapse_has_no_diversity():
  images, labels = _real(32)
  one = np.concatenate([images[np.where(labels == c)[0][:1]].repeat(100, axis=0)
                        for c in range(10)])
  s = ds.digits_score(one, np.repeat(np.arange(10), 100))
  assert s["diversity"] < 1e-3
  assert s["frechet"] > 5.0
  assert s["recall"] < 0.05 and s["coverage"] < 0.1      # 10 points cover little


def test_shuffled_labels_score_chance():
  images, labels = _per_class(*_real(32))
  shuffled = np.random.default_rng(0).permutation(labels)
  s = ds.digits_score(images, shuffled)
  assert 0.03 < s["accuracy"] < 0.18


def test_noise_scores_badly():
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (500, 32, 32, 3)).astype(np.uint8)
  s = ds.digits_score(noise, np.arange(500) % 10)
  assert s["accuracy"] < 0.3 and s["frechet"] > 20
  assert s["precision"] < 0.05 and s["coverage"] < 0.05


def test_knn_metrics_in_classifier_space_equal_feature_metrics():
  images, labels = _per_class(*_real(16), n=30)
  s = ds.digits_score(images, labels, reference=None)
  clf, _, ref_feats = ds._model()
  feats = ds.hidden_features(clf, ds.to_digits_space(images))
  # brute force in numpy: distances, k-th neighbour radii (column 0 is the point itself)
  d_rr = np.sqrt(((ref_feats[:, None] - ref_feats[None]) ** 2).sum(-1))
  d_ff = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
  d_rf = np.sqrt(((ref_feats[:, None] - feats[None]) ** 2).sum(-1))
  r3, r5, f3 = np.sort(d_rr, 1)[:, 3], np.sort(d_rr, 1)[:, 5], np.sort(d_ff, 1)[:, 3]
  n = len(feats)
  assert s["precision"] == pytest.approx((d_rf <= r3[:, None]).any(0).mean(), abs=1.5 / n)
  assert s["recall"] == pytest.approx((d_rf <= f3[None]).any(1).mean(), abs=1.5 / 1797)
  assert s["density"] == pytest.approx((d_rf < r5[:, None]).sum(0).mean() / 5, abs=1.5 / n)
  assert s["coverage"] == pytest.approx((d_rf.min(1) < r5).mean(), abs=1.5 / 1797)


def test_conversion_to_8x8():
  x, _ = ds._real_digits()
  near, _ = _real(16, "nearest")
  back = ds.to_digits_space(near)
  assert back.shape == (1797, 64)
  np.testing.assert_allclose(back, x, atol=16 / 255)          # 8-bit rounding only
  # Floats in [-1, 1] and inverted (dark-ink) images map to the same space.
  f = near.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(ds.to_digits_space(f), back, atol=1e-9)
  np.testing.assert_allclose(ds.to_digits_space(255 - near, invert=True), back, atol=1e-9)
  # Area weights for sizes that 8 does not divide: rows are averages.
  m = ds._area_matrix(28, 8)
  np.testing.assert_allclose(m.sum(axis=1), 1.0)
  assert m.shape == (8, 28) and (m >= 0).all()
  with pytest.raises(ValueError):
    ds.digits_score(near[:3], np.array([0, 1]))
  with pytest.raises(ValueError):
    ds.digits_score(near[:2], np.array([0, 10]))
