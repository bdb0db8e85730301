"""Which input sources exist (`SOURCES`), what each returns (`Source`), the per-process
batch size.

Kept apart from the package's `__init__` so that the pipelines (digits,
tf.data) can import it without importing the package's dispatcher back.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Iterator

import numpy as np

from sagan_jax.errors import ConfigError

# config.data.source -> its module in this package: one with its own `make_source` (a source
# of host batches), or a tf.data reader (`train_reader`, `eval_reader`) that `pipeline` runs.
# A new kind of data is a module and a line here (check_config below reads the names).
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
