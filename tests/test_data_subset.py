"""config.data.classes and config.data.examples_per_class on every source."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from sagan_jax import errors, preflight
from sagan_jax.data import digits, make_source, subset
from sagan_jax.errors import DataError
from tests.conftest import data_config, image_ids, load_config, take
from tests.test_data_folder import folder_config, id_folder


def _data(classes=(), per_class=0):
  d = ml_collections.ConfigDict()
  d.classes, d.examples_per_class = tuple(classes), per_class
  return d


def test_select_keeps_chosen_classes_relabelled_and_nested_subsets():
  labels = np.repeat(np.arange(4), 10)[np.random.default_rng(0).permutation(40)]
  keep, new = subset.select(labels, 4, _data((3, 1)), "x")
  np.testing.assert_array_equal(keep, np.flatnonzero(np.isin(labels, (3, 1))))
  np.testing.assert_array_equal(new, np.where(labels[keep] == 3, 0, 1))   # k -> classes[k]
  small, _ = subset.select(labels, 4, _data((3, 1), 3), "x")
  big, _ = subset.select(labels, 4, _data((3, 1), 6), "x")
  assert len(small) == 6 and set(small) <= set(big)   # the first N of one fixed order
  assert [int((labels[small] == k).sum()) for k in (3, 1)] == [3, 3]
  again, _ = subset.select(labels.copy(), 4, _data((3, 1), 3), "x")
  np.testing.assert_array_equal(small, again)
  every, _ = subset.select(labels, 4, _data((), 2), "x")
  assert len(every) == 8
  ev, _ = subset.select(labels, 4, _data((3,), 2), "x", training=False)
  assert len(ev) == 10   # evaluation data: the classes, all their images


def test_select_refuses_missing_class_and_too_many_per_class():
  labels = np.array([0, 0, 1, 1, 1, 2])
  with pytest.raises(DataError, match=r"names class 5, but x has 3 classes \(0..2\)"):
    subset.select(labels, 3, _data((0, 5)), "x")
  with pytest.raises(DataError, match="class 2 of x has only 1 images; use at most 1"):
    subset.select(labels, 3, _data((), 2), "x")


def _digits_config(**data):
  c = data_config("digits", resolution=16, num_classes=len(data.get("classes", ())) or 10,
                  batch_size=20, **data)
  return c


def test_digits_subset_same_images_on_every_run_and_process():
  c = _digits_config(classes=(5, 6, 7, 8, 9), examples_per_class=20)
  src = make_source(c)
  assert src.num_classes == 5
  batches = take(src, 5)   # one epoch of the 100 images
  imgs = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert len({im.tobytes() for im in imgs}) == 100
  assert np.bincount(labels, minlength=5).tolist() == [20] * 5
  all_imgs, all_labels = digits.load(16)
  lookup = {im.tobytes(): int(y) for im, y in zip(all_imgs, all_labels)}
  assert all(lookup[im.tobytes()] == 5 + int(y) for im, y in zip(imgs, labels))
  again = take(make_source(c), 5)
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in again]), imgs)
  halves = [take(make_source(c, process_index=p, process_count=2), 5) for p in (0, 1)]
  for k in range(5):
    joined = np.concatenate([halves[0][k]["image"], halves[1][k]["image"]])
    np.testing.assert_array_equal(joined, batches[k]["image"])
  other_seed = _digits_config(classes=(5, 6, 7, 8, 9), examples_per_class=20)
  other_seed.seed = 3   # another run seed: another order, the same 100 images
  imgs3 = np.concatenate([b["image"] for b in take(make_source(other_seed), 5)])
  assert {im.tobytes() for im in imgs3} == {im.tobytes() for im in imgs}


def test_folder_subset(tmp_path):
  id_folder(tmp_path, n_classes=3, per_class=8)   # class c holds image ids 8c .. 8c+7
  c = folder_config(tmp_path, num_classes=2, batch_size=6, classes=(2, 0),
                    examples_per_class=3)
  src = make_source(c)
  assert src.num_classes == 2
  got = {}
  for b in take(src, 4):
    for i, y in zip(image_ids(b["image"]), b["label"]):
      got.setdefault(int(y), set()).add(i)
  assert len(got[0]) == 3 and all(16 <= i < 24 for i in got[0])   # label 0 = class2
  assert len(got[1]) == 3 and all(0 <= i < 8 for i in got[1])
  with pytest.raises(DataError, match="names class 3"):
    make_source(folder_config(tmp_path, num_classes=2, classes=(3, 0)))


def test_validate_subset_fields():
  for over, msg in (({"data__classes": (1, 1)}, "config.data.classes"),
                    ({"data__classes": (1, 2)}, "config.model.num_classes=10"),
                    ({"data__examples_per_class": -1}, "config.data.examples_per_class")):
    with pytest.raises(errors.ConfigError, match=msg):
      preflight.check_config(load_config("tiny", **over))
  c = load_config("cifar10", data__examples_per_class=5)
  with pytest.raises(errors.ConfigError, match="not supported for data.source='tfds'"):
    preflight.check_config(c)


def test_digits_evaluator_follows_data_classes():
  from sagan_jax.evaluation import digits_score, training_evals
  c = load_config("digits", model__num_classes=5, data__classes=(5, 6, 7, 8, 9))
  preflight.check_config(c)
  ev = training_evals.make_all(c, None, None)[0]
  assert isinstance(ev, training_evals.DigitsEval)
  imgs, labels = digits.load(16)
  keep = np.isin(labels, (5, 6, 7, 8, 9))
  r = ev.score(imgs[keep], labels[keep] - 5)   # the real digits, as model labels
  assert r["accuracy"] > 0.95 and r["frechet"] < 1e-6 and abs(r["diversity"] - 1) < 1e-6
  full = digits_score.digits_score(imgs[keep], labels[keep])   # against all ten digits
  assert full["frechet"] > 1.0
  bad = load_config("digits", model__num_classes=2, data__classes=(5, 12), eval_every=5)
  with pytest.raises(errors.ConfigError, match="digits score"):
    preflight.check_config(bad)
