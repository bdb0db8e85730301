"""The TFDS input pipeline (sagan_jax.data.tfds_source + pipeline, source 'tfds').

Uses tfds.testing.mock_data for imagenet2012 and cifar10 (no download), and
a tiny dataset really prepared in a temporary data_dir (for sharding, the
data_dir / TFDS_DATA_DIR handling and the resume seed), since mock_data
ignores sub-splits.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sagan_jax.data import make_source, pipeline
from sagan_jax.errors import DataError
from tests.conftest import data_config, image_ids, take

N_TRAIN, N_TEST = 24, 6


class SaganTinyImages(tfds.core.GeneratorBasedBuilder):
  """Solid-colour images of odd sizes; image i has value 8*i + 4, label i % 3."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3),
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, N_TRAIN),
            "test": self._generate_examples(N_TRAIN, N_TEST)}

  def _generate_examples(self, start, n):
    for i in range(start, start + n):
      h, w = 20 + i % 7, 17 + (3 * i) % 11
      yield i, {"image": np.full((h, w, 3), 8 * i + 4, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  SaganTinyImages(data_dir=d).download_and_prepare()
  return d


def tfds_config(name="imagenet2012", *, data_dir="", resolution=32, num_classes=1000,
                batch_size=4, **data):
  return data_config("tfds", resolution=resolution, num_classes=num_classes,
                     batch_size=batch_size, name=name, dir=data_dir, **data)


def tiny_config(data_dir, **kw):
  kw.setdefault("num_classes", 3)
  kw.setdefault("resolution", 16)
  return tfds_config("sagan_tiny_images", data_dir=data_dir, **kw)


def test_mock_imagenet2012_batches():
  with tfds.testing.mock_data(num_examples=12):
    src = make_source(tfds_config(batch_size=8))
    assert (src.num_classes, src.resolution, src.name) == (1000, 32, "tfds:imagenet2012")
    for b in take(src, 3):   # more than the 12 examples: the stream repeats
      assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.uint8
      assert b["label"].dtype == np.int32 and ((0 <= b["label"]) & (b["label"] < 1000)).all()
      assert b["image"].std() > 10   # decoded random pixels, not a blank placeholder


def test_mock_cifar10_eval_iterator_is_the_dataset_unchanged():
  # CIFAR images are 32x32 squares: at resolution 32 the eval transform
  # (centre crop of the short side, resize) must give back the exact pixels.
  with tfds.testing.mock_data(num_examples=10):
    cfg = tfds_config("cifar10", num_classes=10)
    ref = list(tfds.as_numpy(tfds.builder("cifar10").as_dataset(split="test",
                                                                  shuffle_files=False)))
    batches = list(pipeline.make_eval_iterator(cfg, "test", batch_size=4))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    imgs = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(imgs, np.stack([r["image"] for r in ref]))
    np.testing.assert_array_equal(labels, [r["label"] for r in ref])
    three = list(pipeline.make_eval_iterator(cfg, "test", batch_size=4, num_images=3))
    np.testing.assert_array_equal(three[0]["image"], imgs[:3])
    # Training batches: right classes, and at 16x16 the resize runs.
    cfg.model.resolution = 16
    src = make_source(cfg)
    assert src.num_classes == 10 and next(src)["image"].shape == (4, 16, 16, 3)


def test_two_processes_read_disjoint_complete_shares(tiny_dir):
  cfg = tiny_config(tiny_dir, batch_size=8, shuffle_buffer=100)   # local batch 4
  seen = []
  for p in (0, 1):
    src = make_source(cfg, process_index=p, process_count=2)
    ids = [i for b in take(src, 3) for i in image_ids(b["image"])]   # one epoch: 12
    ids2 = [i for b in take(src, 3) for i in image_ids(b["image"])]
    assert len(set(ids)) == 12 and sorted(ids) == sorted(ids2)
    seen.append(set(ids))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N_TRAIN))
  ev = [[i for b in pipeline.make_eval_iterator(cfg, batch_size=5, process_index=p,
                                                 process_count=2)
         for i in image_ids(b["image"])] for p in (0, 1)]
  assert set(ev[0]) == seen[0] and set(ev[1]) == seen[1]
  test = [i for b in pipeline.make_eval_iterator(cfg, "test", batch_size=4)
          for i in image_ids(b["image"])]
  assert sorted(test) == list(range(N_TRAIN, N_TRAIN + N_TEST))


def test_labels_and_shuffle(tiny_dir):
  src = make_source(tiny_config(tiny_dir, batch_size=12, shuffle_buffer=100))
  b = next(src)
  ids = image_ids(b["image"])
  assert b["label"].tolist() == [i % 3 for i in ids]
  assert ids != sorted(ids)   # shuffled


def test_stream_is_seeded_by_seed_process_and_start_batch(tiny_dir):
  cfg = tiny_config(tiny_dir, shuffle_buffer=100)

  def ids(**kw):
    return [image_ids(b["image"]) for b in take(make_source(cfg, **kw), 4)]

  base = ids()
  assert ids() == base
  assert ids(start_batch=3) != base
  cfg.seed = 5
  assert ids() != base


def test_tfds_data_dir_env_is_honoured(tiny_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
  assert next(make_source(tiny_config("")))["image"].shape == (4, 16, 16, 3)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))   # empty: not prepared there
  with pytest.raises(DataError, match="not prepared in " + str(tmp_path)):
    make_source(tiny_config(""))


def test_prepare_command(tmp_path, capsys):
  from sagan_jax.data import prepare
  d = str(tmp_path / "tfds")
  assert prepare.main(["sagan_tiny_images", "--data_dir", d]) == 0
  assert "prepared sagan_tiny_images" in capsys.readouterr().out
  assert next(make_source(tiny_config(d)))["image"].shape == (4, 16, 16, 3)
  # ImageNet: refuses before any work when the archives are missing, naming them.
  assert prepare.main(["imagenet2012", "--data_dir", d]) == 2
  err = capsys.readouterr().err
  assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar not found in " + d in err


def test_unconditional_config_accepts_any_class_count(tiny_dir):
  # num_classes=0 trains an unconditional model; the dataset's labels still come along.
  src = make_source(tiny_config(tiny_dir, num_classes=0, batch_size=6))
  b = next(src)
  assert src.num_classes == 3 and b["label"].tolist() == [i % 3 for i in image_ids(b["image"])]


@pytest.mark.parametrize("case, words", [
    ("imagenet", ["imagenet2012", "not prepared", "ILSVRC2012_img_train.tar",
                  "ILSVRC2012_img_val.tar", "/downloads/manual/",
                  "python -m sagan_jax.data.prepare imagenet2012 --data_dir="]),
    ("imagenet_tars_present", ["Both archives", "sagan_jax.data.prepare imagenet2012"]),
    ("cifar10", ["'cifar10' is not prepared", "sagan_jax.data.prepare cifar10 --data_dir="]),
    ("resized", ["sagan_jax.data.prepare imagenet_resized/64x64"]),
    ("unknown", ["'no_such_dataset' is not a TFDS dataset", "catalog"]),
    ("classes", ["has 3 classes", "--config.model.num_classes=3"]),
    ("label_key", ["no class labels", "num_classes=0", "label_key"]),
    ("image_key", ["no feature 'picture'", "image_key"]),
    ("split", ["'validation'", "Available splits", "'test', 'train'"]),
    ("not_divisible", ["not divisible", "multiple of 3"]),
])
def test_errors_say_what_to_do(tiny_dir, tmp_path, case, words):
  empty = str(tmp_path)
  kw = {}
  cfg = {
      "imagenet": lambda: tfds_config(data_dir=empty),
      "imagenet_tars_present": lambda: tfds_config(data_dir=empty),
      "cifar10": lambda: tfds_config("cifar10", data_dir=empty, num_classes=10),
      "resized": lambda: tfds_config("imagenet_resized/64x64", data_dir=empty),
      "unknown": lambda: tfds_config("no_such_dataset"),
      "classes": lambda: tiny_config(tiny_dir, num_classes=10),
      "label_key": lambda: tiny_config(tiny_dir, label_key="class"),
      "image_key": lambda: tiny_config(tiny_dir, image_key="picture"),
      "split": lambda: tiny_config(tiny_dir, split="validation"),
      "not_divisible": lambda: tiny_config(tiny_dir, batch_size=4),
  }[case]()
  if case == "imagenet_tars_present":
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for t in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
      (manual / t).write_bytes(b"")
  if case == "not_divisible":
    kw = dict(process_index=0, process_count=3)
  with pytest.raises(ValueError if case == "not_divisible" else DataError) as info:
    make_source(cfg, **kw)
  msg = str(info.value)
  if case == "imagenet":
    assert f"{empty}/downloads/manual/" in msg
  for w in words:
    assert w in msg, (w, msg)
