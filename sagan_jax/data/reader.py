"""What a tf.data reader (TFDS or image folder) hands the pipeline.

A reader (`tfds_source.train_reader` / `eval_reader`, `folder.train_reader` /
`eval_reader`, given the run's `source.DataSpec`) checks the data against it
and returns a `Reader`: an unbatched tf.data.Dataset plus what the pipeline
needs to transform, batch and report it. Both readers also use `data_options`
(the tf.data options of every dataset here) and `check_classes` (the
dataset's class count against config.model.num_classes), so those live here,
below the readers and the pipeline that imports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from absl import logging

from sagan_jax.errors import DataError
from sagan_jax.data.transforms import import_tf


@dataclasses.dataclass(frozen=True)
class Reader:
  """One process's raw stream of a tf.data source.

  dataset: elements (image, label, index) from a training reader (index = the
    element's number in the endless stream) or (image, label) from an
    evaluation reader; image is encoded bytes when `encoded`, else a decoded
    [H, W, C] tensor; label is int32 (0 without labels).
  num_classes: the dataset's class count (0: no labels).
  name: "tfds:<name>" or "folder:<root>", for logs and `Source.name`.
  path_of: stream number -> file path, to name a file that failed to decode
    (None: TFDS, which checks its images when the dataset is prepared).
  num_files: how many files this process reads (0 for TFDS).
  """

  dataset: Any
  encoded: bool
  num_classes: int
  name: str
  path_of: Callable[[int], str] | None = None
  num_files: int = 0


def data_options(threads: int | None):
  """Deterministic tf.data options; `threads` caps the private thread pool (benchmarks)."""
  tf = import_tf()
  options = tf.data.Options()
  options.deterministic = True
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return options


def check_classes(num_classes: int, found: int, what: str, where: str) -> None:
  """DataError unless `found` classes suit the model's `num_classes` (0: any).

  num_classes is config.model.num_classes, which the messages name.
  """
  want = num_classes
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
