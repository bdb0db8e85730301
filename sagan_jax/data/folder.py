"""Index of an image folder: one subfolder per class, local or gs://.

Layouts (`root` is `config.data.dir`):

  root/<class>/<image>            classes = sorted subfolder names
  root/<split>/<class>/<image>    tfds.ImageFolder's layout; `config.data.split`
                                  picks root/<split> when that folder exists
  root/<image>                    no subfolders: one class (unconditional only)

Images are the files directly inside a class folder whose extension is one of
IMAGE_EXTENSIONS (case-insensitive); hidden files and folders (".name") and
other files are ignored. Labels are the classes' indices in sorted order of
their folder names, so every process and every run agrees on them.

Listing goes through `tf.io.gfile`, so gs:// works wherever TensorFlow can
read the bucket. Each process lists the whole folder and keeps every
`process_count`-th file (see `shard_indices`), so the processes' shares are
disjoint, cover the folder and stay the same when a run resumes.

The reader (`train_reader`, `eval_reader`; called by `sagan_jax.data.pipeline`
with the run's `DataSpec` for config.data.source='folder') turns this
process's share into a `Reader` of
(encoded bytes, label[, index]): for training a fresh seeded permutation of
the whole share every epoch (file names are small), endlessly; for evaluation
once, in order. Before reading, the first files are test-decoded until one
works (`_PROBE_FILES`), so a folder of unreadable files stops at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from sagan_jax.errors import DataError
from sagan_jax.data import subset
from sagan_jax.data.reader import Reader, check_classes, data_options
from sagan_jax.data.source import DataSpec
from sagan_jax.data.transforms import import_tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_PROBE_FILES = 32        # files test-decoded before starting, until one works


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  root: str                      # the folder whose subfolders are the classes
  class_names: tuple[str, ...]   # sorted; index = label
  paths: tuple[str, ...]         # every image, sorted by (class, file name)
  labels: np.ndarray             # int32 [len(paths)]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _gfile():
  return import_tf().io.gfile


def _join(a: str, b: str) -> str:
  return a.rstrip("/") + "/" + b


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list(gfile, path: str) -> tuple[list[str], list[str]]:
  """(sorted subfolder names, sorted file names) directly inside `path`."""
  import tensorflow as tf
  try:
    top = next(iter(gfile.walk(path)), None)
  except tf.errors.OpError as e:
    raise DataError(f"cannot list the image folder {path}: {e.message}. Check the path "
                    "and that this machine may read it.") from e
  if top is None:
    raise DataError(f"cannot list the image folder {path}. Check the path and that this "
                    "machine may read it (the folder exists but listing it failed).")
  _, dirs, files = top
  dirs = sorted(d.rstrip("/") for d in dirs if not d.startswith("."))
  files = sorted(f for f in files if not f.startswith("."))
  return dirs, files


def scan(directory: str, split: str = "train") -> FolderIndex:
  """Lists the images of a class-subfolder tree; raises DataError if unusable."""
  gfile = _gfile()
  if not directory:
    raise DataError("config.data.dir is empty; set --config.data.dir=PATH to a folder "
                    "with one subfolder of images per class.")
  if not gfile.exists(directory):
    raise DataError(f"the image folder {directory} does not exist; set --config.data.dir to "
                    "a folder with one subfolder of images per class.")
  if not gfile.isdir(directory):
    raise DataError(f"config.data.dir={directory} is a file, not a folder; point it at a "
                    "folder with one subfolder of images per class.")
  root = directory
  dirs, files = _list(gfile, root)
  if split and split in dirs:
    root = _join(directory, split)
    dirs, files = _list(gfile, root)

  images = [f for f in files if _is_image(f)]
  if not dirs:
    if not images:
      raise DataError(
          f"the image folder {root} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
          " and no class subfolders; put the images in one subfolder per class.")
    name = root.rstrip("/").rsplit("/", 1)[-1]
    paths = [_join(root, f) for f in images]
    return FolderIndex(root, (name,), tuple(paths), np.zeros(len(paths), np.int32))

  per_class = {}
  for d in dirs:
    sub_dirs, sub_files = _list(gfile, _join(root, d))
    per_class[d] = ([f for f in sub_files if _is_image(f)], sub_dirs)
  if all(not imgs and subs for imgs, subs in per_class.values()):
    raise DataError(
        f"the image folder {directory} looks like a split layout (<split>/<class>/<image>: "
        f"its subfolders {dirs[:5]} hold only folders) but has no subfolder named "
        f"{split!r}; set --config.data.split to one of {dirs}.")
  empty = [d for d, (imgs, _) in per_class.items() if not imgs]
  if empty:
    raise DataError(
        f"class folder(s) {', '.join(_join(root, d) for d in empty[:5])} in {root} hold no "
        f"images (extensions {', '.join(IMAGE_EXTENSIONS)}, directly inside the class "
        "folder); add images or remove those folders.")
  if images:
    logging.warning("Ignoring %d image files directly in %s: with class subfolders, images "
                    "must be inside them.", len(images), root)
  paths, labels = [], []
  for label, d in enumerate(dirs):
    imgs = per_class[d][0]
    paths.extend(_join(_join(root, d), f) for f in imgs)
    labels.extend([label] * len(imgs))
  return FolderIndex(root, tuple(dirs), tuple(paths), np.asarray(labels, np.int32))


def shard_indices(n: int, process_index: int, process_count: int) -> np.ndarray:
  """Indices of the files process `process_index` reads: every process_count-th.

  Over all processes the shares are disjoint and cover range(n); since files
  are sorted by class, each share has every class in proportion.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  return np.arange(process_index, n, process_count, dtype=np.int64)


# ----------------------------------------------------------------------------
# Reader


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


def _index(data_config, num_classes: int, split=None, training: bool = True) -> FolderIndex:
  """The scanned folder (only data_config's subset of it), its class count checked.

  num_classes: the model's class count the folder's must suit (0: any).
  """
  index = scan(data_config.dir, split or data_config.split)
  if subset.active(data_config):
    keep, labels = subset.select(index.labels, index.num_classes, data_config,
                                 f"image folder {index.root}", training=training)
    names = tuple(index.class_names[k] for k in tuple(data_config.classes)) or index.class_names
    index = FolderIndex(index.root, names, tuple(index.paths[i] for i in keep), labels)
  check_classes(num_classes, index.num_classes, f"{index.num_classes} class subfolders",
                f"image folder {index.root}")
  return index


def _epoch_order(tf, n: int, seed: int, epoch):
  """This epoch's permutation of range(n) (stateless: recomputable from (seed, epoch))."""
  u = tf.random.stateless_uniform([n], tf.stack([tf.constant(seed, tf.int64),
                                                 tf.cast(epoch, tf.int64)]))
  return tf.argsort(u, stable=True)


def train_reader(spec: DataSpec, *, process_index: int, process_count: int, seeds,
                 threads: int | None) -> Reader:
  """Endless (bytes, label, index) of this process's files, a new order each epoch.

  seeds[1] seeds the epoch permutations (see `pipeline.stream_seeds`).
  """
  tf = import_tf()
  index = _index(spec.data, spec.num_classes)
  mine = shard_indices(len(index.paths), process_index, process_count)
  if len(mine) == 0:
    raise DataError(f"image folder {index.root} has {len(index.paths)} images, fewer than "
                    f"the {process_count} processes; add images.")
  paths = [index.paths[i] for i in mine]
  labels = index.labels[mine]
  _probe(tf, paths)
  n = len(paths)
  order_seed = int(seeds[1])
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels, tf.int32)

  epochs = tf.data.Dataset.counter()
  ds = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(
      _epoch_order(tf, n, order_seed, e)))
  ds = ds.enumerate().map(
      lambda k, i: (tf.io.read_file(tf.gather(paths_t, i)), tf.gather(labels_t, i), k),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.with_options(data_options(threads))
  cache = {}

  def path_of(k: int) -> str:
    epoch, pos = divmod(int(k), n)
    if epoch not in cache:
      cache.clear()
      cache[epoch] = _epoch_order(tf, n, order_seed, epoch).numpy()
    return paths[int(cache[epoch][pos])]

  return Reader(ds, True, index.num_classes, f"folder:{index.root}", path_of, n)


def eval_reader(spec: DataSpec, split: str | None, *, process_index: int, process_count: int,
                num_images: int | None) -> Reader:
  """(bytes, label) of this process's files in `split` (if that subfolder exists), in order.

  num_images: only the first that many of this process's files.
  """
  tf = import_tf()
  index = _index(spec.data, spec.num_classes, split, training=False)
  mine = shard_indices(len(index.paths), process_index, process_count)
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
  return Reader(ds, True, index.num_classes, f"folder:{index.root}", paths.__getitem__, n)
