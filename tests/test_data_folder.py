"""The image-folder input pipeline (sagan_jax.data.folder + pipeline, source 'folder')."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from sagan_jax.data import folder as folder_lib
from sagan_jax.data import make_source, pipeline
from sagan_jax.errors import DataError
from tests.conftest import data_config, image_ids, take


def folder_config(path, *, resolution=16, num_classes=3, batch_size=4, flip=False, **data):
  return data_config("folder", resolution=resolution, num_classes=num_classes,
                     batch_size=batch_size, dir=str(path), random_flip=flip, **data)


def save(path, array, mode=None, fmt=None, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(array)
  if mode == "P":   # an exact palette, no dithering
    img = img.convert("P", palette=Image.ADAPTIVE)
  elif mode:
    img = img.convert(mode)
  img.save(path, fmt, **kw)


def id_folder(root, n_classes=3, per_class=8):
  """Solid-colour PNGs of odd sizes; image number i has value 8*i + 4 (exact, i < 32)."""
  i = 0
  for c in range(n_classes):
    for j in range(per_class):
      h, w = 17 + 3 * j, 23 + 5 * c
      save(f"{root}/class{c}/img{j:02d}.png", np.full((h, w, 3), 8 * i + 4, np.uint8))
      i += 1
  return i


def test_mixed_formats_sizes_and_modes(tmp_path):
  red = (200, 30, 90)
  rgb = np.zeros((31, 45, 3), np.uint8) + np.array(red, np.uint8)
  save(f"{tmp_path}/a_red/rgb.png", rgb)
  save(f"{tmp_path}/a_red/rgb.jpg", rgb, quality=95)
  save(f"{tmp_path}/a_red/rgba.png", np.dstack([rgb, np.full((31, 45), 70, np.uint8)]))
  save(f"{tmp_path}/a_red/palette.gif", rgb, "P")
  gray = np.full((53, 19), 120, np.uint8)
  save(f"{tmp_path}/b_gray/gray.png", gray)
  save(f"{tmp_path}/b_gray/gray.JPEG", gray, quality=95)
  save(f"{tmp_path}/b_gray/la.png", np.dstack([gray, gray]), "LA")
  save(f"{tmp_path}/b_gray/tiny.bmp", np.full((3, 5, 3), 120, np.uint8))
  (tmp_path / "b_gray" / "notes.txt").write_text("not an image")   # ignored
  (tmp_path / "b_gray" / ".hidden.png").write_bytes(b"junk")       # ignored
  idx = folder_lib.scan(str(tmp_path))
  assert idx.class_names == ("a_red", "b_gray") and len(idx.paths) == 8
  src = make_source(folder_config(tmp_path, num_classes=2, batch_size=8, flip=True))
  assert (src.num_classes, src.resolution) == (2, 16)
  for batch in take(src, 3):
    img, lab = batch["image"], batch["label"]
    assert img.shape == (8, 16, 16, 3) and img.dtype == np.uint8
    assert lab.shape == (8,) and lab.dtype == np.int32
    want = np.where(lab[:, None] == 0, np.array(red), np.array([120, 120, 120]))
    err = np.abs(img.astype(int) - want[:, None, None, :]).max()
    assert err <= 4, err  # JPEG/GIF round-off only; alpha dropped, gray -> RGB
  assert not src.iterator.skipped_files


def crop_folder(root):
  """'tall' images 48x16 and 'wide' 16x48 whose pixel value is 5 * position."""
  ramp = (5 * np.arange(48)).astype(np.uint8)
  tall = np.repeat(ramp[:, None], 16, axis=1)
  wide = np.repeat(ramp[None, :], 16, axis=0)
  save(f"{root}/tall/t.png", np.dstack([tall] * 3))
  save(f"{root}/wide/w.png", np.dstack([wide] * 3))


def test_train_crop_is_a_random_square_of_the_short_side(tmp_path):
  crop_folder(tmp_path)
  src = make_source(folder_config(tmp_path, num_classes=2, batch_size=16))
  offsets = {0: set(), 1: set()}
  for batch in take(src, 8):
    for img, lab in zip(batch["image"].astype(int), batch["label"]):
      line = img[:, 0, 0] if lab == 0 else img[0, :, 0]   # along the long side
      start = line[0] // 5
      # A contiguous, unresized 16-pixel window of the ramp, inside the image.
      assert (line == 5 * (start + np.arange(16))).all(), line
      assert 0 <= start <= 32
      offsets[int(lab)].add(int(start))
      assert (img == img[:, :1] if lab == 0 else img == img[:1]).all()
  assert len(offsets[0]) > 5 and len(offsets[1]) > 5, offsets   # positions vary


def test_center_crop_option_and_eval_transform(tmp_path):
  crop_folder(tmp_path)
  cfg = folder_config(tmp_path, num_classes=2, batch_size=8, train_crop="center")
  for batch in take(make_source(cfg), 2):
    for img, lab in zip(batch["image"].astype(int), batch["label"]):
      line = img[:, 0, 0] if lab == 0 else img[0, :, 0]
      assert (line == 5 * (16 + np.arange(16))).all()
  batches = list(pipeline.make_eval_iterator(cfg, batch_size=8))
  assert len(batches) == 1 and batches[0]["image"].shape == (2, 16, 16, 3)
  t, w = batches[0]["image"].astype(int)
  assert (t[:, 0, 0] == 5 * (16 + np.arange(16))).all()
  assert (w[0, :, 0] == 5 * (16 + np.arange(16))).all()


def test_random_flip(tmp_path):
  crop_folder(tmp_path)
  flips = []
  for flip in (False, True):
    cfg = folder_config(tmp_path, num_classes=2, batch_size=16, flip=flip, train_crop="center")
    n = 0
    for batch in take(make_source(cfg), 4):
      wide = batch["image"][batch["label"] == 1].astype(int)
      n += int((wide[:, 0, 0, 0] > wide[:, 0, -1, 0]).sum())   # ramp runs backwards
    flips.append(n)
  assert flips[0] == 0
  assert 5 <= flips[1], flips   # about half of ~32 wide images


def test_resize_downscales_with_antialiasing(tmp_path):
  # A 1-pixel checkerboard shrunk 3x: plain bilinear sampling would hit single
  # pixels (0 or 255); the antialiased resize averages it to mid-gray.
  board = ((np.indices((48, 48)).sum(0) % 2) * 255).astype(np.uint8)
  save(f"{tmp_path}/c/board.png", np.dstack([board] * 3))
  cfg = folder_config(tmp_path, num_classes=0, batch_size=2)
  img = next(make_source(cfg))["image"].astype(int)
  assert np.abs(img - 128).max() <= 4, (img.min(), img.max())


def test_two_processes_read_disjoint_complete_shares(tmp_path):
  n = id_folder(tmp_path)            # 24 images, 3 classes
  cfg = folder_config(tmp_path, batch_size=8)   # local batch 4, 12 images each
  seen = []
  for p in (0, 1):
    src = make_source(cfg, process_index=p, process_count=2)
    first, second = take(src, 3), take(src, 3)   # exactly two epochs of the share
    ids = [i for b in first for i in image_ids(b["image"])]
    ids2 = [i for b in second for i in image_ids(b["image"])]
    assert len(set(ids)) == 12 and sorted(ids) == sorted(ids2) and ids != ids2
    for b in first:   # labels follow the folder the image came from
      assert all(lab == i // 8 for lab, i in zip(b["label"], image_ids(b["image"])))
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(n))
  # The evaluation iterator shards the same way, in order, once.
  ev = [list(pipeline.make_eval_iterator(cfg, batch_size=5, process_index=p,
                                          process_count=2)) for p in (0, 1)]
  ev_ids = [[i for b in e for i in image_ids(b["image"])] for e in ev]
  assert ev_ids[0] == sorted(ev_ids[0]) and set(ev_ids[0]) == seen[0]
  assert set(ev_ids[1]) == seen[1] and [len(b["label"]) for b in ev[1]] == [5, 5, 2]
  a, b = folder_lib.shard_indices(10, 0, 3), folder_lib.shard_indices(10, 1, 3)
  c = folder_lib.shard_indices(10, 2, 3)
  assert sorted(np.concatenate([a, b, c]).tolist()) == list(range(10))


def test_stream_is_seeded_by_seed_process_and_start_batch(tmp_path):
  id_folder(tmp_path)
  cfg = folder_config(tmp_path, batch_size=4, flip=True)

  def ids(**kw):
    return [image_ids(b["image"]) for b in take(make_source(cfg, **kw), 4)]

  base = ids()
  assert ids() == base                      # deterministic
  assert ids(start_batch=7) != base         # a resumed run gets fresh batches
  cfg.seed = 1
  assert ids() != base


def test_flat_folder_unconditional_and_split_layout(tmp_path):
  for i in range(3):
    save(f"{tmp_path}/flat/{i}.png", np.full((9, 9, 3), 8 * i + 4, np.uint8))
  src = make_source(folder_config(tmp_path / "flat", num_classes=0, batch_size=3))
  b = next(src)
  assert sorted(image_ids(b["image"])) == [0, 1, 2] and (b["label"] == 0).all()
  # tfds.ImageFolder layout root/<split>/<class>/<image>: data.split picks the subfolder.
  id_folder(tmp_path / "split" / "train", n_classes=2, per_class=2)
  for j in range(3):
    save(f"{tmp_path}/split/test/class{j}/x.png", np.full((9, 9, 3), 7, np.uint8))
  cfg = folder_config(tmp_path / "split", num_classes=2, batch_size=4)
  assert make_source(cfg).num_classes == 2
  cfg.model.num_classes = 3
  ev = list(pipeline.make_eval_iterator(cfg, "test", batch_size=8))
  assert ev[0]["label"].tolist() == [0, 1, 2] and (ev[0]["image"] == 7).all()
  cfg.data.split = "validation"
  with pytest.raises(DataError, match=r"split.*'train'"):
    make_source(cfg)


@pytest.mark.parametrize("case, words", [
    ("missing", ["does not exist", "config.data.dir"]),
    ("file", ["is a file, not a folder"]),
    ("empty", ["no images", "subfolder per class"]),
    ("empty_class", ["hold no images", "class1"]),
    ("one_class", ["only one class", "num_classes=0"]),
    ("mismatch", ["has 2 classes", "num_classes=2"]),
    ("all_corrupt", ["cannot be read or decoded", "bad0.jpg"]),
    ("not_divisible", ["not divisible", "multiple of 4"]),
])
def test_errors_say_what_to_do(tmp_path, case, words):
  root = tmp_path / "data"
  root.mkdir()
  cfg = folder_config(root, num_classes=3)
  kw = {}
  if case == "missing":
    cfg.data.dir = str(tmp_path / "nowhere")
  elif case == "file":
    (root / "x.zip").write_bytes(b"PK")
    cfg.data.dir = str(root / "x.zip")
  elif case == "empty_class":
    id_folder(root, n_classes=1, per_class=2)
    (root / "class1").mkdir()
  elif case == "one_class":
    id_folder(root, n_classes=1, per_class=2)
  elif case == "mismatch":
    id_folder(root, n_classes=2, per_class=2)
  elif case == "all_corrupt":
    cfg.model.num_classes = 0
    (root / "c").mkdir()
    for i in range(3):
      (root / "c" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  elif case == "not_divisible":
    id_folder(root)
    cfg.batch_size = 6
    kw = dict(process_index=0, process_count=4)
  err = ValueError if case == "not_divisible" else DataError
  with pytest.raises(err) as info:
    make_source(cfg, **kw)
  for w in words:
    assert w in str(info.value), (w, str(info.value))


def test_corrupt_files_are_skipped_counted_and_named(tmp_path, caplog):
  id_folder(tmp_path, per_class=10)        # 30 good images, 3 bad files below
  good = (tmp_path / "class1" / "img03.png").read_bytes()
  (tmp_path / "class1" / "truncated.png").write_bytes(good[: len(good) // 2])
  (tmp_path / "class2" / "text.jpg").write_bytes(b"hello")
  os.symlink(tmp_path / "gone.png", tmp_path / "class0" / "dangling.png")   # unreadable
  cfg = folder_config(tmp_path, batch_size=8)
  src = make_source(cfg)
  with caplog.at_level(logging.WARNING):
    ids = [i for b in take(src, 8) for i in image_ids(b["image"])]   # 64 images, 2+ epochs
  assert sorted(set(ids)) == list(range(30))   # every good image, no placeholder
  bad = {str(tmp_path / "class1" / "truncated.png"), str(tmp_path / "class2" / "text.jpg"),
         str(tmp_path / "class0" / "dangling.png")}
  assert set(src.iterator.skipped_files) == bad
  assert all(v >= 2 for v in src.iterator.skipped_files.values())   # counted per epoch
  logged = " ".join(r.getMessage() for r in caplog.records)
  assert all(p in logged for p in bad)
  assert sum("truncated.png" in r.getMessage() for r in caplog.records) == 1  # warned once
  # The same in the evaluation iterator: the 30 good images, the 3 bad ones reported.
  ev = pipeline.make_eval_iterator(cfg, batch_size=7)
  ev_ids = [i for b in ev for i in image_ids(b["image"])]
  assert sorted(ev_ids) == list(range(30)) and set(ev.skipped_files) == bad


def test_too_many_corrupt_files_stop_with_their_names(tmp_path):
  id_folder(tmp_path, n_classes=1, per_class=8)
  for i in range(3):
    (tmp_path / "class0" / f"zz_bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
  src = make_source(folder_config(tmp_path, num_classes=0, batch_size=4))
  with pytest.raises(DataError, match=r"of this process's 11 image files.*zz_bad"):
    take(src, 6)
