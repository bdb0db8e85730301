"""Which input sources exist (`SOURCES`), what each reads of the config (`DataSpec`), what
each returns (`Source`), the per-process batch size.

Kept apart from the package's `__init__` so that the pipelines (digits,
tf.data) can import it without importing the package's dispatcher back.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterator

import numpy as np

from sagan_jax.errors import ConfigError

# config.data.source -> its module in this package: one with its own
# `make_source(spec, *, process_index, process_count, start_batch) -> Source` (a source of
# host batches; `data.make_source` calls it with `DataSpec.of(config)`), or a tf.data reader
# (`train_reader(spec, *, process_index, process_count, seeds, threads)` and
# `eval_reader(spec, split, *, process_index, process_count, num_images)`, each returning a
# `reader.Reader`) that `pipeline` runs. A new kind of data is a module and a line here
# (check_config below reads the names).
SOURCES = {"digits": "digits", "tfds": "tfds_source", "folder": "folder"}


def check_config(c) -> None:
  """ConfigError for `data.source` (one of SOURCES) and a folder source without `data.dir`."""
  from sagan_jax.errors import check_field
  check_field(c.data.source in SOURCES, "data.source", c.data.source,
              f"use one of {sorted(SOURCES)}")
  check_field(c.data.source != "folder" or bool(c.data.dir), "data.dir", c.data.dir,
              "set it to the image folder (one subfolder per class) for data.source='folder'")


def source_module(source: str):
  """The module of `config.data.source` (imported on first use: TensorFlow only when needed)."""
  if source not in SOURCES:
    raise ConfigError(f"config.data.source={source!r} is invalid: use one of "
                      f"{sorted(SOURCES)}.")
  return importlib.import_module(f"sagan_jax.data.{SOURCES[source]}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the data modules read of a run's config; `DataSpec.of(config)` builds it.

  data: config.data (source, name, dir, split, keys, crop, flip, shuffle buffer, subset).
  batch_size: the global batch (config.batch_size).
  seed: config.seed, which seeds the stream with the process and the start batch.
  resolution: the model's image size (config.model.resolution).
  num_classes: the model's class count (config.model.num_classes; 0 = unconditional),
    which the data's class count must suit.
  """

  data: Any
  batch_size: int
  seed: int
  resolution: int
  num_classes: int

  @classmethod
  def of(cls, config) -> DataSpec:
    """The spec of a full config: the only place in `sagan_jax.data` that reads one."""
    return cls(data=config.data, batch_size=config.batch_size, seed=config.seed,
               resolution=config.model.resolution, num_classes=config.model.num_classes)


@dataclasses.dataclass
class Source:
  """An infinite stream of host-local uint8 batches plus what the model needs."""

  iterator: Iterator[dict[str, np.ndarray]]
  num_classes: int
  resolution: int
  name: str

  def __iter__(self):
    return self.iterator

  def __next__(self):
    return next(self.iterator)


def local_batch_size(global_batch: int, process_count: int) -> int:
  """This process's share of the global batch; ValueError unless it divides evenly."""
  if global_batch % process_count:
    raise ValueError(
        f"config.batch_size={global_batch} is not divisible by the number of "
        f"processes ({process_count}); choose a multiple of {process_count}.")
  return global_batch // process_count
