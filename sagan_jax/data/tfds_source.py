"""The TFDS reader: one process's share of a prepared TFDS dataset.

`train_reader` and `eval_reader` (called by `sagan_jax.data.pipeline` with the
run's `DataSpec` for config.data.source='tfds') open `config.data.name` in the
data_dir (config.data.dir, else TFDS_DATA_DIR, else the TFDS default), check
its image/label features against the spec, and return a `Reader` of
(image, label[, index]). Each process reads its share of the split
(`tfds.split_for_jax_process`). For training the files are read in a seeded
shuffled order, then shuffled in a buffer of config.data.shuffle_buffer and
repeated; for evaluation once, in order.

A dataset that is not prepared stops with a message saying how to prepare it
(`python -m sagan_jax.data.prepare`, which shares this module's ImageNet
archive names, dataset-name check and data_dir fallback).
"""

from __future__ import annotations

import dataclasses
import os

from sagan_jax.errors import DataError
from sagan_jax.data import subset
from sagan_jax.data.reader import Reader, check_classes, data_options
from sagan_jax.data.source import DataSpec
from sagan_jax.data.transforms import import_tf

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def is_imagenet(name: str) -> bool:
  """Whether a TFDS name ('imagenet2012', 'imagenet2012/x:5.1.0') is ImageNet-1k."""
  return name.split("/")[0].split(":")[0] == "imagenet2012"


def tfds_data_dir(data_dir: str | None) -> str | None:
  """The data_dir asked for, else TFDS_DATA_DIR, else None (the TFDS default)."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def manual_dir(data_dir: str | None) -> str:
  """Where TFDS looks for manual downloads in `data_dir` (no trailing slash)."""
  import tensorflow_datasets as tfds
  return (data_dir or tfds.core.constants.DATA_DIR).rstrip("/") + "/downloads/manual"


def missing_imagenet_tars(manual: str) -> list[str]:
  """The ImageNet archives that are not in the folder `manual`."""
  tf = import_tf()
  return [t for t in IMAGENET_TARS if not tf.io.gfile.exists(f"{manual.rstrip('/')}/{t}")]


def _prepare_message(name: str, data_dir: str | None, tfds) -> str:
  import tensorflow as tf
  where = data_dir or (f"{tfds.core.constants.DATA_DIR} (the TFDS default; set "
                       "--config.data.dir or TFDS_DATA_DIR to use another)")
  flag = f" --data_dir={data_dir}" if data_dir else ""
  build = f"`python -m sagan_jax.data.prepare {name}{flag}`"
  if is_imagenet(name):
    manual = manual_dir(data_dir) + "/"
    try:
      missing = missing_imagenet_tars(manual)
    except tf.errors.OpError:
      missing = list(IMAGENET_TARS)
    if not missing:
      todo = f"Both archives are in {manual}; run {build} once"
    else:
      todo = (f"ImageNet needs a manual download: get {IMAGENET_TARS[0]} and "
              f"{IMAGENET_TARS[1]} from https://image-net.org (registration required), put "
              f"both in {manual} and run {build} once")
    return (f"TFDS dataset {name!r} is not prepared in {where}. {todo} (or `tfds build "
            f"imagenet2012{flag}`; it writes about 150 GB of TFRecords, a gs:// bucket works "
            "as data_dir). See docs/data.md.")
  return (f"TFDS dataset {name!r} is not prepared in {where}. Prepare it once on a machine "
          f"with internet access: {build} (or `tfds build {name}{flag}`), then copy that "
          "data_dir here (or to a gs:// bucket) and point --config.data.dir (or "
          "TFDS_DATA_DIR) at it. See docs/data.md.")


def _builder(data_config):
  """(tfds, the builder of data_config.name, its data_dir); DataError if it cannot open."""
  tf = import_tf()
  import tensorflow_datasets as tfds
  name = data_config.name
  data_dir = tfds_data_dir(data_config.dir)
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


def _features(data_config, model_classes: int, builder) -> tuple[bool, int]:
  """(image feature is encoded, number of classes); DataError if unusable.

  model_classes: the model's class count the dataset's must suit (0: any).
  """
  import tensorflow_datasets as tfds
  feats = builder.info.features
  name, ikey, lkey = data_config.name, data_config.image_key, data_config.label_key
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
  classes = tuple(data_config.classes)
  if classes:
    subset.check_classes(classes, num_classes, f"TFDS dataset {name!r} (feature {lkey!r})")
  check_classes(model_classes, len(classes) or num_classes, f"feature {lkey!r}",
                f"TFDS dataset {name!r}" + (" (config.data.classes)" if classes else ""))
  return encoded, num_classes


def _read(data_config, model_classes: int, split, *, shuffle_files: bool,
          file_seed: int | None, threads: int | None) -> Reader:
  """A Reader of (image, label) over `split`, or DataError (see `_features`)."""
  tf = import_tf()
  tfds, builder, data_dir = _builder(data_config)
  encoded, num_classes = _features(data_config, model_classes, builder)
  ikey, lkey = data_config.image_key, data_config.label_key
  read_config = tfds.ReadConfig(shuffle_seed=file_seed, shuffle_reshuffle_each_iteration=True,
                                options=data_options(threads))
  decoders = {ikey: tfds.decode.SkipDecoding()} if encoded else None
  try:
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                            decoders=decoders)
  except AssertionError as e:  # "could not find data in ..."
    raise DataError(_prepare_message(data_config.name, data_dir, tfds)) from e
  except (ValueError, KeyError) as e:
    splits = sorted(builder.info.splits.keys())
    raise DataError(f"cannot read split {split!r} of TFDS dataset {data_config.name!r}: {e}. "
                    f"Available splits: {splits}; set --config.data.split.") from e
  except tf.errors.OpError as e:
    raise DataError(f"cannot read TFDS dataset {data_config.name!r} in {data_dir}: "
                    f"{e.message}") from e
  has_label = num_classes > 0

  def pick(ex):
    label = tf.cast(ex[lkey], tf.int32) if has_label else tf.constant(0, tf.int32)
    return ex[ikey], label

  ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
  classes = tuple(data_config.classes)
  if classes:   # keep those classes; model label k = source class classes[k]
    position = [-1] * num_classes
    for k, c in enumerate(classes):
      position[c] = k
    table = tf.constant(position, tf.int32)
    ds = ds.map(lambda image, label: (image, tf.gather(table, label)))
    ds = ds.filter(lambda image, label: label >= 0)
    num_classes = len(classes)
  return Reader(ds, encoded, num_classes, f"tfds:{data_config.name}")


def _split_name(split: str, process_index: int, process_count: int) -> str:
  """`split`, or this process's share of it."""
  import tensorflow_datasets as tfds
  if process_count == 1:
    return split
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def train_reader(spec: DataSpec, *, process_index: int, process_count: int, seeds,
                 threads: int | None) -> Reader:
  """Endless (image, label, index) of this process's share, shuffled.

  seeds[0] orders the files, seeds[1] the shuffle buffer (see
  `pipeline.stream_seeds`).
  """
  import_tf()  # hides accelerators from TF before any dataset is built
  split = _split_name(spec.data.split, process_index, process_count)
  reader = _read(spec.data, spec.num_classes, split, shuffle_files=True,
                 file_seed=int(seeds[0]), threads=threads)
  ds = reader.dataset
  if spec.data.shuffle_buffer > 1:
    ds = ds.shuffle(spec.data.shuffle_buffer, seed=int(seeds[1]),
                    reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().map(lambda k, x: (x[0], x[1], k))
  return dataclasses.replace(reader, dataset=ds)


def eval_reader(spec: DataSpec, split: str | None, *, process_index: int, process_count: int,
                num_images: int | None) -> Reader:
  """(image, label) of this process's share of `split` (default data.split), once, in order.

  num_images is not needed here: the pipeline stops after that many and
  TFDS reads lazily.
  """
  del num_images
  name = _split_name(split or spec.data.split, process_index, process_count)
  return _read(spec.data, spec.num_classes, name, shuffle_files=False, file_seed=None,
               threads=None)
