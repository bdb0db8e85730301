"""Fewer examples, chosen classes: which images of a labelled source a run trains on.

`config.data.classes` (a tuple of the source's class indices; () = all) keeps
those classes, and the model's label k is source class classes[k].
`config.data.examples_per_class` (0 = all) then keeps the first N images of
each kept class in a fixed order: a permutation of that class's images (in
the source's own order) seeded by (SUBSET_SEED, class), independent of
config.seed, of the process and of the run, so every run and process that
asks for N per class trains on the same images, and asking for more keeps
the smaller set's images. A class with fewer than N images is refused
(DataError naming it), rather than silently training on unequal classes.
Used by every source: the digits (`digits.make_source`), image folders
(`folder`) and TFDS (`tfds_source`, classes only). Numpy only.
"""

from __future__ import annotations

import numpy as np

from sagan_jax.errors import DataError, check_field

SUBSET_SEED = 20240519   # fixed: the subset depends on the data, not on config.seed


def active(data_config) -> bool:
  """Whether `config.data` asks for a subset."""
  return bool(tuple(data_config.classes)) or data_config.examples_per_class > 0


def check_classes(classes, num_source_classes: int, where: str) -> None:
  """DataError unless every index in `classes` is a class of the source."""
  missing = [k for k in classes if k >= num_source_classes]
  if missing:
    raise DataError(f"config.data.classes={tuple(classes)} names class {missing[0]}, but "
                    f"{where} has {num_source_classes} classes (0..{num_source_classes - 1}).")


def select(labels: np.ndarray, num_source_classes: int, data_config, where: str,
           *, training: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(indices into the source's images to keep, in the source's order; their model labels).

  labels: the source's int labels [N]; where: the source's name for messages;
  training=False (evaluation data, e.g. reference statistics): classes only,
  every image of them.
  """
  labels = np.asarray(labels).astype(np.int64)
  classes = tuple(data_config.classes) or tuple(range(num_source_classes))
  check_classes(classes, num_source_classes, where)
  per_class = data_config.examples_per_class if training else 0
  keep = []
  for k in classes:
    idx = np.flatnonzero(labels == k)
    if per_class:
      if len(idx) < per_class:
        raise DataError(f"config.data.examples_per_class={per_class} but class {k} of {where} "
                        f"has only {len(idx)} images; use at most {_smallest(labels, classes)}.")
      order = np.random.default_rng([SUBSET_SEED, int(k)]).permutation(len(idx))
      idx = idx[order[:per_class]]
    keep.append(idx)
  kept = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
  position = {k: i for i, k in enumerate(classes)}
  new_labels = np.asarray([position[int(v)] for v in labels[kept]], np.int32)
  return kept, new_labels


def _smallest(labels: np.ndarray, classes) -> int:
  return int(min((labels == k).sum() for k in classes))


def num_classes(data_config, num_source_classes: int) -> int:
  """The number of classes the model sees."""
  return len(tuple(data_config.classes)) or num_source_classes


def check_config(c) -> None:
  """ConfigError naming the first subset field that cannot work (preflight.check_config)."""
  d = c.data
  check_field(isinstance(d.examples_per_class, int) and d.examples_per_class >= 0,
              "data.examples_per_class", d.examples_per_class, "must be an integer >= 0 (0 = all)")
  check_field(d.examples_per_class == 0 or d.source != "tfds", "data.examples_per_class",
         d.examples_per_class, "is not supported for data.source='tfds' (TFDS streams in a "
         "shuffled file order); write the images to a class-subfolder tree and use 'folder'")
  classes = tuple(d.classes)
  check_field(all(isinstance(k, int) and k >= 0 for k in classes) and
              len(set(classes)) == len(classes), "data.classes", classes,
              "must be distinct class indices >= 0, e.g. (0, 1, 2, 3, 4)")
  n = c.model.num_classes
  check_field(not classes or n in (0, len(classes)), "model.num_classes", n,
              f"must be {len(classes)} (the length of data.classes) or 0 (unconditional)")


