"""The tf.data input pipeline: readers in, host-local numpy batches out.

`make_source(spec, ...)` (called by `sagan_jax.data.make_source` with
`DataSpec.of(config)` for `config.data.source` 'tfds' or 'folder') returns an
infinite `Source` of host-local batches {"image": uint8 [B, R, R, 3],
"label": int32 [B]}, B = config.batch_size // process_count,
R = config.model.resolution. `make_eval_iterator(config, ...)` (an entry
point: it takes the whole config) yields the same dicts once over a split,
in order, with the evaluation transform (for reference statistics).
`train_dataset(spec, ...)` is the batched training tf.data.Dataset behind
`make_source` (benchmarks/input_pipeline.py measures it). The reader modules
get the spec (`train_reader(spec, ...)`, `eval_reader(spec, split, ...)`).

Pipeline per process (TensorFlow runs on the CPU only; see `transforms`):

  reader (`tfds_source` or `folder`): this process's share, in a seeded order
  -> decode + train transform (parallel) -> batch -> prefetch.

Seeds: shuffling and augmentation are seeded by (config.seed, process_index,
start_batch) (`stream_seeds`), so processes see different orders and a
resumed run (start_batch > 0) continues with fresh batches instead of
replaying the first ones. Given the same arguments the stream is
deterministic.

Folder images that cannot be read or decoded are skipped: each path is logged
once as a warning and counted (`source.iterator.skipped_files`); if more than
MAX_BAD_FRACTION of a process's files fail, or none of the first files decode,
DataError is raised naming them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np
from absl import logging

from sagan_jax.errors import DataError
from sagan_jax.data.reader import Reader, data_options
from sagan_jax.data.source import DataSpec, Source, local_batch_size, source_module
from sagan_jax.data.transforms import eval_transform, import_tf, train_transform

MAX_BAD_FRACTION = 0.1   # of a process's folder files that may fail to decode

def _reader_module(source: str):
  """The tf.data reader module of config.data.source=`source`."""
  module = source_module(source)
  if not hasattr(module, "train_reader"):
    raise ValueError(f"config.data.source={source!r} is not a tf.data source")
  return module


def stream_seeds(seed: int, process_index: int, start_batch: int) -> np.ndarray:
  """Four 31-bit seeds from (seed = config.seed, process_index, start_batch).

  [0] the TFDS file order, [1] the TFDS shuffle buffer or the folder's epoch
  order, [2] the augmentation, [3] unused.
  """
  entropy = [int(seed) % 2**63, int(process_index), int(start_batch)]
  return (np.random.SeedSequence(entropy).generate_state(4, np.uint64) % 2**31).astype(np.int64)


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


def _batched(tf, ds, reader: Reader, batch: int, *, drop_remainder: bool,
             threads: int | None):
  """Transformed elements -> batches: drop undecodable files, batch, prefetch."""
  if reader.path_of is not None:
    ds = ds.ignore_errors()
  ds = ds.batch(batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(data_options(threads))


def _augment(tf, ds, data_config, resolution: int, aug_seed: int, encoded: bool):
  """(image, label, index) -> {"image": train transform to `resolution`, "label", "index"}."""
  flip = bool(data_config.random_flip)
  crop = data_config.train_crop

  def fn(image, label, index):
    seed = tf.stack([tf.constant(aug_seed, tf.int64), tf.cast(index, tf.int64)])
    return {"image": train_transform(image, seed, resolution, random_flip=flip, crop=crop,
                                     encoded=encoded),
            "label": label, "index": index}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class TrainDataset:
  """The batched training tf.data.Dataset of {"image", "label", "index"} and its reader's facts."""

  dataset: object
  num_classes: int
  name: str
  path_of: Callable[[int], str] | None
  num_files: int


def train_dataset(spec: DataSpec, *, process_index: int = 0, process_count: int = 1,
                  start_batch: int = 0, threads: int | None = None) -> TrainDataset:
  """The batched training dataset behind `make_source`.

  `threads` limits tf.data's thread pool (benchmarks).
  """
  tf = import_tf()
  batch = local_batch_size(spec.batch_size, process_count)
  module = _reader_module(spec.data.source)
  seeds = stream_seeds(spec.seed, process_index, start_batch)
  reader = module.train_reader(spec, process_index=process_index,
                               process_count=process_count, seeds=seeds, threads=threads)
  ds = _augment(tf, reader.dataset, spec.data, spec.resolution, int(seeds[2]), reader.encoded)
  ds = _batched(tf, ds, reader, batch, drop_remainder=True, threads=threads)
  return TrainDataset(ds, reader.num_classes, reader.name, reader.path_of, reader.num_files)


def make_source(spec: DataSpec, *, process_index: int = 0, process_count: int = 1,
                start_batch: int = 0) -> Source:
  """Infinite Source of this process's batches; DataError if the data is unusable."""
  train = train_dataset(spec, process_index=process_index, process_count=process_count,
                        start_batch=start_batch)
  logging.info("Input %s: process %d of %d, local batch %d, resolution %d, %d classes.",
               train.name, process_index, process_count,
               local_batch_size(spec.batch_size, process_count), spec.resolution,
               train.num_classes)
  return Source(_Batches(train.dataset, train.path_of, train.num_files), train.num_classes,
                spec.resolution, train.name)


def make_eval_iterator(config, split: str | None = None, batch_size: int = 256,
                       num_images: int | None = None, *, process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Batches of the evaluation transform over `split` (default config.data.split).

  In dataset order, once (no shuffle, no repeat); the last batch may be
  smaller. num_images: stop after that many images (of this process's
  share). With process_count > 1 each process gets a disjoint share.
  Yields {"image": uint8 [b, R, R, 3], "label": int32 [b]}; the iterator's
  `skipped_files` names folder files that could not be decoded.
  """
  tf = import_tf()
  spec = DataSpec.of(config)
  res = spec.resolution
  reader = _reader_module(spec.data.source).eval_reader(
      spec, split, process_index=process_index, process_count=process_count,
      num_images=num_images)
  ds = reader.dataset
  if num_images is not None:
    ds = ds.take(num_images)
  ds = ds.enumerate().map(
      lambda k, x: {"image": eval_transform(x[0], res, encoded=reader.encoded),
                    "label": x[1], "index": k}, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _batched(tf, ds, reader, batch_size, drop_remainder=False, threads=None)
  return _Batches(ds, reader.path_of, reader.num_files, end=reader.num_files)
