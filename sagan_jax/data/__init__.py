"""Input pipelines behind one interface.

`make_source(config, ...)` returns a `Source`: an iterable of host-local
batches `{"image": uint8 [local_batch, H, W, 3], "label": int32 [local_batch]}`
where `local_batch = config.batch_size // process_count`. Images stay uint8 on
the host; the train step normalises them to [-1, 1] on device. Every source is
infinite (repeats) and seeded by `(config.seed, start_batch)`, where
`start_batch` is the number of global batches the run has already consumed, so
a resumed run continues with fresh batches instead of replaying the first ones.
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
  if global_batch % process_count:
    raise ValueError(
        f"config.batch_size={global_batch} is not divisible by the number of "
        f"processes ({process_count}); choose a multiple of {process_count}.")
  return global_batch // process_count


def make_source(config, *, process_index: int = 0, process_count: int = 1,
                start_batch: int = 0) -> Source:
  """Builds the input source named by `config.data.source`."""
  source = config.data.source
  if source == "digits":
    from sagan_jax.data import digits
    return digits.make_source(config, process_index=process_index,
                              process_count=process_count,
                              start_batch=start_batch)
  if source in ("tfds", "folder"):
    from sagan_jax.data import tfds_source
    return tfds_source.make_source(config, process_index=process_index,
                                   process_count=process_count,
                                   start_batch=start_batch)
  raise ValueError(
      f"config.data.source={source!r} is not known; use one of "
      "'digits', 'tfds', 'folder'.")
