"""tf.data input pipelines: TFDS datasets and image folders.

`make_source(config, ...)` (called by `sagan_jax.data.make_source` for
`config.data.source` 'tfds' or 'folder') returns an infinite `Source` of
host-local batches {"image": uint8 [B, R, R, 3], "label": int32 [B]},
B = config.batch_size // process_count, R = config.model.resolution.
`make_eval_iterator(config, ...)` yields the same dicts once over a split,
in order, with the evaluation transform (for reference statistics).

Pipeline per process (TensorFlow runs on the CPU only; accelerators are
hidden from it so it never takes their memory):

  TFDS:   its share of the split (tfds.split_for_jax_process), files read in
          a seeded shuffled order -> shuffle(config.data.shuffle_buffer)
  folder: its share of the files (every process_count-th, sorted), a fresh
          seeded permutation every epoch (the whole share: file names are small)
  -> repeat -> decode + train transform (parallel) -> batch -> prefetch.

Seeds: shuffling and augmentation are seeded by (config.seed, process_index,
start_batch), so processes see different orders and a resumed run (start_batch
> 0) continues with fresh batches instead of replaying the first ones. Given
the same arguments the stream is deterministic.

Transforms (`train_transform`, `eval_transform`):

  train ('random', default): a square crop whose side is the image's short
        side, at a uniformly random position along the long side, resized to
        R x R; then a horizontal flip with probability 1/2 when
        config.data.random_flip. This is the official SAGAN preprocessing
        (square crop of the short side, bilinear resize to 128) with the crop
        position randomised, as BigGAN-PyTorch's RandomCropLongEdge.
  train ('center', config.data.train_crop='center'): the official code's
        exact choice (it trained on a pre-made centre-cropped 128x128 copy).
  eval: the centre square crop of the short side, resized to R x R.

Resizing is bilinear with antialiasing (like PIL's bilinear, which made the
official 128x128 copy), rounded to uint8. Square images of size R pass
through unchanged (CIFAR-10 at 32, imagenet_resized/64x64 at 64).

Folder images that cannot be read or decoded are skipped: each path is logged
once as a warning and counted (`source.iterator.skipped_files`); if more than
MAX_BAD_FRACTION of a process's files fail, or none of the first files decode,
DataError is raised naming them.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np

from sagan_jax.data import Source, local_batch_size
from sagan_jax.data import folder as folder_lib
from sagan_jax.data.errors import DataError

MAX_BAD_FRACTION = 0.1   # of a process's folder files that may fail to decode
_PROBE_FILES = 32        # folder files test-decoded before starting, until one works

_tf = None


def import_tf():
  """TensorFlow with GPUs and TPUs hidden from it (JAX owns the accelerators)."""
  global _tf
  if _tf is None:
    import tensorflow as tf
    for kind in ("GPU", "TPU"):
      try:
        tf.config.set_visible_devices([], kind)
      except (RuntimeError, ValueError) as e:  # TF already initialised, or no such kind
        if tf.config.get_visible_devices(kind):
          logging.warning("TensorFlow already sees %s devices (%s); the input pipeline may "
                          "take accelerator memory.", kind, e)
    _tf = tf
  return _tf


# ----------------------------------------------------------------------------
# Transforms


def _square_window(tf, height, width, crop: str, seed):
  """(y, x, side) of the square crop with side = short side."""
  side = tf.minimum(height, width)
  if crop == "center":
    return (height - side) // 2, (width - side) // 2, side
  sy, sx = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  y = tf.random.stateless_uniform([], sy, minval=0, maxval=height - side + 1, dtype=tf.int32)
  x = tf.random.stateless_uniform([], sx, minval=0, maxval=width - side + 1, dtype=tf.int32)
  return y, x, side


def _to_rgb(tf, image):
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  if image.dtype != tf.uint8:
    image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
  c = image.shape[-1]
  if c == 1:
    return tf.image.grayscale_to_rgb(image)
  if c == 3:
    return image
  if c == 4 or c == 2:  # drop alpha
    return tf.image.grayscale_to_rgb(image[..., :1]) if c == 2 else image[..., :3]
  ch = tf.shape(image)[-1]  # unknown channel count
  return tf.cond(ch >= 3, lambda: image[..., :3],
                 lambda: tf.tile(image[..., :1], [1, 1, 3]))


def _decode_square(tf, image, crop: str, seed, encoded: bool):
  """Decoded uint8 RGB square crop (short side) of an encoded or decoded image."""
  if not encoded:
    image = _to_rgb(tf, image)
    shape = tf.shape(image)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return image[y:y + side, x:x + side]

  def jpeg():  # decode only the crop window
    shape = tf.image.extract_jpeg_shape(image)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, side, side]), channels=3)

  def other():  # PNG, GIF (first frame), BMP, WebP
    img = tf.io.decode_image(image, channels=3, expand_animations=False)
    shape = tf.shape(img)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return img[y:y + side, x:x + side]

  return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _resize(tf, image, resolution: int):
  image = tf.image.resize(image, [resolution, resolution], method="bilinear", antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(image, [resolution, resolution, 3])


def train_transform(image, seed, resolution: int, *, random_flip: bool = True,
                    crop: str = "random", encoded: bool = True):
  """Training transform of one image (a TF function usable inside tf.data.map).

  image: encoded bytes (JPEG/PNG/GIF/BMP/WebP) or, with encoded=False, a
    decoded [H, W, C] tensor. seed: int32/int64 [2] stateless seed.
  Returns uint8 [resolution, resolution, 3].
  """
  tf = import_tf()
  seed = tf.cast(seed, tf.int64)
  s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  out = _resize(tf, _decode_square(tf, image, crop, s_crop, encoded), resolution)
  if random_flip:
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    out = tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)
  return out


def eval_transform(image, resolution: int, *, encoded: bool = True):
  """Evaluation transform: centre square crop of the short side, resize (uint8)."""
  tf = import_tf()
  return _resize(tf, _decode_square(tf, image, "center", None, encoded), resolution)


# ----------------------------------------------------------------------------
# Seeds and common pipeline pieces


def _seeds(config, process_index: int, start_batch: int) -> np.ndarray:
  """Four 31-bit seeds from (config.seed, process_index, start_batch)."""
  entropy = [int(config.seed) % 2**63, int(process_index), int(start_batch)]
  return (np.random.SeedSequence(entropy).generate_state(4, np.uint64) % 2**31).astype(np.int64)


def _options(tf, threads: int | None):
  options = tf.data.Options()
  options.deterministic = True
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return options


def _augment(tf, ds, config, aug_seed: int, encoded: bool):
  """(image, label, index) -> {"image": train transform, "label", "index"}."""
  res = config.model.resolution
  flip = bool(config.data.random_flip)
  crop = config.data.get("train_crop", "random")

  def fn(image, label, index):
    seed = tf.stack([tf.constant(aug_seed, tf.int64), tf.cast(index, tf.int64)])
    return {"image": train_transform(image, seed, res, random_flip=flip, crop=crop,
                                     encoded=encoded),
            "label": label, "index": index}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _check_classes(config, found: int, what: str, where: str):
  want = config.model.num_classes
  if want == 0:
    if found > 1:
      logging.info("%s has %d classes; config.model.num_classes=0 trains an unconditional "
                   "model (set --config.model.num_classes=%d to condition on them).",
                   where, found, found)
    return
  if found == 0:
    raise DataError(
        f"{where} has no class labels ({what}), but config.model.num_classes={want}; set "
        "--config.model.num_classes=0 for an unconditional model, or choose the label "
        "feature with --config.data.label_key.")
  if found == 1:
    raise DataError(
        f"{where} has only one class ({what}), but the config is class-conditional "
        f"(config.model.num_classes={want}); set --config.model.num_classes=0 for an "
        "unconditional model, or arrange the images in one subfolder per class.")
  if found != want:
    raise DataError(
        f"{where} has {found} classes ({what}) but config.model.num_classes={want}; set "
        f"--config.model.num_classes={found} (or 0 for an unconditional model).")


class _Batches:
  """Numpy iterator over a batched tf.data pipeline that carries 'index'.

  Elements are numbered in stream order; a decode failure drops the element
  (ignore_errors), so a gap in the numbers names the file that failed.
  `path_of(k)` maps a stream number to the file's path (None: TFDS, which
  checks its images when the dataset is prepared).
  """

  def __init__(self, ds, path_of=None, num_files: int = 0, end: int | None = None):
    self._it = ds.as_numpy_iterator()
    self._path_of = path_of
    self._num_files = num_files
    self._next = 0
    self._end = end
    self.skipped_files: dict[str, int] = {}

  def __iter__(self):
    return self

  def _skip(self, numbers):
    for k in numbers:
      path = self._path_of(k)
      if path not in self.skipped_files:
        logging.warning("Skipping image file that cannot be read or decoded: %s", path)
        self.skipped_files[path] = 0
      self.skipped_files[path] += 1
    if len(self.skipped_files) > MAX_BAD_FRACTION * self._num_files:
      bad = sorted(self.skipped_files)
      raise DataError(
          f"{len(bad)} of this process's {self._num_files} image files cannot be read or "
          f"decoded (more than {MAX_BAD_FRACTION:.0%}), e.g. {', '.join(bad[:5])}; remove or "
          "re-encode them (JPEG, PNG, GIF, BMP or WebP).")

  def __next__(self) -> dict[str, np.ndarray]:
    tf = import_tf()
    try:
      batch = next(self._it)
    except StopIteration:
      if self._path_of is not None and self._end is not None and self._next < self._end:
        self._skip(range(self._next, self._end))
      raise
    except tf.errors.OpError as e:
      raise DataError(f"reading the input data failed: {e.message}") from e
    index = batch.pop("index")
    if self._path_of is not None and len(index):
      last = int(index[-1])
      if int(index[0]) != self._next or last - self._next + 1 != len(index):
        present = set(index.tolist())
        self._skip([k for k in range(self._next, last + 1) if k not in present])
      self._next = last + 1
    return {"image": batch["image"], "label": batch["label"].astype(np.int32)}


# ----------------------------------------------------------------------------
# TFDS


def _data_dir(config) -> str | None:
  return config.data.dir or os.environ.get("TFDS_DATA_DIR") or None


def _prepare_message(name: str, data_dir: str | None, tfds) -> str:
  import tensorflow as tf
  where = data_dir or (f"{tfds.core.constants.DATA_DIR} (the TFDS default; set "
                       "--config.data.dir or TFDS_DATA_DIR to use another)")
  base = (data_dir or tfds.core.constants.DATA_DIR).rstrip("/")
  flag = f" --data_dir={data_dir}" if data_dir else ""
  build = f"`python -m sagan_jax.data.prepare {name}{flag}`"
  if name.split("/")[0].split(":")[0] == "imagenet2012":
    manual = f"{base}/downloads/manual/"
    tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    try:
      present = [t for t in tars if tf.io.gfile.exists(manual + t)]
    except tf.errors.OpError:
      present = []
    if len(present) == len(tars):
      todo = f"Both archives are in {manual}; run {build} once"
    else:
      todo = (f"ImageNet needs a manual download: get {tars[0]} and {tars[1]} from "
              f"https://image-net.org (registration required), put both in {manual} "
              f"and run {build} once")
    return (f"TFDS dataset {name!r} is not prepared in {where}. {todo} (or `tfds build "
            f"imagenet2012{flag}`; it writes about 150 GB of TFRecords, a gs:// bucket works "
            "as data_dir). See docs/data.md.")
  return (f"TFDS dataset {name!r} is not prepared in {where}. Prepare it once on a machine "
          f"with internet access: {build} (or `tfds build {name}{flag}`), then copy that "
          "data_dir here (or to a gs:// bucket) and point --config.data.dir (or "
          "TFDS_DATA_DIR) at it. See docs/data.md.")


def _tfds_builder(config):
  tf = import_tf()
  import tensorflow_datasets as tfds
  name = config.data.name
  data_dir = _data_dir(config)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
        f"config.data.name={name!r} is not a TFDS dataset; use a name from "
        "https://www.tensorflow.org/datasets/catalog (e.g. 'imagenet2012', "
        "'imagenet_resized/64x64', 'cifar10'), or --config.data.source=folder for your "
        "own images.") from e
  except tf.errors.OpError as e:
    raise DataError(f"cannot open TFDS data_dir {data_dir}: {e.message}") from e
  return tfds, builder, data_dir


def _tfds_features(config, builder):
  import tensorflow_datasets as tfds
  feats = builder.info.features
  name, ikey, lkey = config.data.name, config.data.image_key, config.data.label_key
  if ikey not in feats:
    raise DataError(f"TFDS dataset {name!r} has no feature {ikey!r} "
                    f"(features: {sorted(feats.keys())}); set --config.data.image_key.")
  image_feature = feats[ikey]
  encoded = isinstance(image_feature, tfds.features.Image)
  num_classes = 0
  if lkey in feats:
    lf = feats[lkey]
    if not isinstance(lf, tfds.features.ClassLabel):
      raise DataError(f"feature {lkey!r} of TFDS dataset {name!r} is not a class label "
                      f"({type(lf).__name__}); set --config.data.label_key to a ClassLabel "
                      "feature, or --config.model.num_classes=0.")
    num_classes = lf.num_classes
  _check_classes(config, num_classes, f"feature {lkey!r}", f"TFDS dataset {name!r}")
  return encoded, num_classes


def _tfds_dataset(config, split, *, shuffle_files: bool, file_seed: int | None,
                  threads: int | None):
  """(tf.data.Dataset of (image, label), encoded, num_classes) or DataError."""
  tf = import_tf()
  tfds, builder, data_dir = _tfds_builder(config)
  encoded, num_classes = _tfds_features(config, builder)
  ikey, lkey = config.data.image_key, config.data.label_key
  read_config = tfds.ReadConfig(shuffle_seed=file_seed, shuffle_reshuffle_each_iteration=True,
                                options=_options(tf, threads))
  decoders = {ikey: tfds.decode.SkipDecoding()} if encoded else None
  try:
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                            decoders=decoders)
  except AssertionError as e:  # "could not find data in ..."
    raise DataError(_prepare_message(config.data.name, data_dir, tfds)) from e
  except (ValueError, KeyError) as e:
    splits = sorted(builder.info.splits.keys())
    raise DataError(f"cannot read split {split!r} of TFDS dataset {config.data.name!r}: {e}. "
                    f"Available splits: {splits}; set --config.data.split.") from e
  except tf.errors.OpError as e:
    raise DataError(f"cannot read TFDS dataset {config.data.name!r} in {data_dir}: "
                    f"{e.message}") from e
  has_label = num_classes > 0

  def pick(ex):
    label = tf.cast(ex[lkey], tf.int32) if has_label else tf.constant(0, tf.int32)
    return ex[ikey], label

  return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE), encoded, num_classes


def _split_name(config, process_index, process_count, split=None):
  import tensorflow_datasets as tfds
  split = split or config.data.split
  if process_count == 1:
    return split
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def _tfds_train(config, process_index, process_count, start_batch, threads):
  import_tf()  # hides accelerators from TF before any dataset is built
  seeds = _seeds(config, process_index, start_batch)
  split = _split_name(config, process_index, process_count)
  ds, encoded, num_classes = _tfds_dataset(config, split, shuffle_files=True,
                                           file_seed=int(seeds[0]), threads=threads)
  if config.data.shuffle_buffer > 1:
    ds = ds.shuffle(config.data.shuffle_buffer, seed=int(seeds[1]),
                    reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().map(lambda k, x: (x[0], x[1], k))
  return ds, encoded, num_classes, seeds, None, 0, f"tfds:{config.data.name}"


# ----------------------------------------------------------------------------
# Folder


def _probe(tf, paths) -> None:
  """Raises DataError unless one of the first _PROBE_FILES files decodes."""
  tried = []
  for p in paths[:_PROBE_FILES]:
    try:
      tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
      return
    except tf.errors.OpError:
      tried.append(p)
  raise DataError(
      f"the image files cannot be read or decoded: none of the first {len(tried)} decodes "
      f"(e.g. {', '.join(tried[:3])}); check the folder holds JPEG, PNG, GIF, BMP or WebP "
      "images and that this machine may read them.")


def _folder_index(config, split=None):
  index = folder_lib.scan(config.data.dir, split or config.data.split)
  _check_classes(config, index.num_classes, f"{index.num_classes} class subfolders",
                 f"image folder {index.root}")
  return index


def _epoch_order(tf, n: int, seed: int, epoch):
  """This epoch's permutation of range(n) (stateless: recomputable from (seed, epoch))."""
  u = tf.random.stateless_uniform([n], tf.stack([tf.constant(seed, tf.int64),
                                                 tf.cast(epoch, tf.int64)]))
  return tf.argsort(u, stable=True)


def _folder_train(config, process_index, process_count, start_batch, threads):
  tf = import_tf()
  index = _folder_index(config)
  mine = folder_lib.shard_indices(len(index.paths), process_index, process_count)
  if len(mine) == 0:
    raise DataError(f"image folder {index.root} has {len(index.paths)} images, fewer than "
                    f"the {process_count} processes; add images.")
  paths = [index.paths[i] for i in mine]
  labels = index.labels[mine]
  _probe(tf, paths)
  n = len(paths)
  seeds = _seeds(config, process_index, start_batch)
  order_seed = int(seeds[1])
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels, tf.int32)

  epochs = tf.data.Dataset.counter()
  ds = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(
      _epoch_order(tf, n, order_seed, e)))
  ds = ds.enumerate().map(
      lambda k, i: (tf.io.read_file(tf.gather(paths_t, i)), tf.gather(labels_t, i), k),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.with_options(_options(tf, threads))
  cache = {}

  def path_of(k: int) -> str:
    epoch, pos = divmod(int(k), n)
    if epoch not in cache:
      cache.clear()
      cache[epoch] = _epoch_order(tf, n, order_seed, epoch).numpy()
    return paths[int(cache[epoch][pos])]

  return ds, True, index.num_classes, seeds, path_of, n, f"folder:{index.root}"


# ----------------------------------------------------------------------------
# Public entry points


def train_dataset(config, *, process_index: int = 0, process_count: int = 1,
                  start_batch: int = 0, threads: int | None = None):
  """The batched training tf.data.Dataset and what `Source` needs.

  Returns (dataset of {"image", "label", "index"}, num_classes, name,
  path_of, num_files); `threads` limits tf.data's thread pool (benchmarks).
  """
  tf = import_tf()
  batch = local_batch_size(config.batch_size, process_count)
  build = {"tfds": _tfds_train, "folder": _folder_train}.get(config.data.source)
  if build is None:
    raise ValueError(f"config.data.source={config.data.source!r} is not a tf.data source")
  ds, encoded, num_classes, seeds, path_of, n, name = build(
      config, process_index, process_count, start_batch, threads)
  ds = _augment(tf, ds, config, int(seeds[2]), encoded)
  if path_of is not None:
    ds = ds.ignore_errors()
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_options(tf, threads))
  return ds, num_classes, name, path_of, n


def make_source(config, *, process_index: int = 0, process_count: int = 1,
                start_batch: int = 0) -> Source:
  """Infinite Source of this process's batches; DataError if the data is unusable."""
  ds, num_classes, name, path_of, n = train_dataset(
      config, process_index=process_index, process_count=process_count,
      start_batch=start_batch)
  logging.info("Input %s: process %d of %d, local batch %d, resolution %d, %d classes.",
               name, process_index, process_count,
               local_batch_size(config.batch_size, process_count), config.model.resolution,
               num_classes)
  return Source(_Batches(ds, path_of, n), num_classes, config.model.resolution, name)


def make_eval_iterator(config, split: str | None = None, batch_size: int = 256,
                       num_images: int | None = None, *, process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Batches of the evaluation transform over `split` (default config.data.split).

  In dataset order, once (no shuffle, no repeat); the last batch may be
  smaller. num_images: stop after that many images (of this process's
  share). With process_count > 1 each process gets a disjoint share.
  Yields {"image": uint8 [b, R, R, 3], "label": int32 [b]}.
  """
  tf = import_tf()
  res = config.model.resolution
  if config.data.source == "tfds":
    name = _split_name(config, process_index, process_count, split)
    ds, encoded, _ = _tfds_dataset(config, name, shuffle_files=False, file_seed=None,
                                   threads=None)
    path_of, n = None, 0
  elif config.data.source == "folder":
    index = _folder_index(config, split)
    mine = folder_lib.shard_indices(len(index.paths), process_index, process_count)
    paths = [index.paths[i] for i in mine]
    labels = index.labels[mine]
    if num_images is not None:
      paths, labels = paths[:num_images], labels[:num_images]
    n = len(paths)
    if n:
      _probe(tf, paths)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                             tf.constant(labels, tf.int32)))
    ds = ds.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
    encoded = True
    path_of = paths.__getitem__
  else:
    raise ValueError(f"config.data.source={config.data.source!r} is not a tf.data source")
  if num_images is not None:
    ds = ds.take(num_images)
  ds = ds.enumerate().map(
      lambda k, x: {"image": eval_transform(x[0], res, encoded=encoded), "label": x[1],
                    "index": k}, num_parallel_calls=tf.data.AUTOTUNE)
  if path_of is not None:
    ds = ds.ignore_errors()
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options(tf, None))
  return _Batches(ds, path_of, n, end=n)
