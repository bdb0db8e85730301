"""What every input pipeline returns: `Source`, and the per-process batch size.

Kept apart from the package's `__init__` so that the pipelines (digits,
tf.data) can import it without importing the package's dispatcher back.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


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
