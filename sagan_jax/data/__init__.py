"""Input pipelines behind one interface.

`make_source(config, ...)` returns a `Source`: an iterable of host-local
batches `{"image": uint8 [local_batch, H, W, 3], "label": int32 [local_batch]}`
where `local_batch = config.batch_size // process_count`. Images stay uint8 on
the host; the train step normalises them to [-1, 1] on device. Every source is
infinite (repeats) and seeded by `(config.seed, start_batch)`, where
`start_batch` is the number of global batches the run has already consumed, so
a resumed run continues with fresh batches instead of replaying the first ones.

Only the entry points take the whole config: `make_source(config, ...)` here and
`pipeline.make_eval_iterator(config, ...)`. Each builds a `DataSpec` once
(`DataSpec.of(config)`: config.data, the global batch size, the seed, the
model's resolution and class count) and hands it down: a source module's
`make_source(spec, ...)`, a reader's `train_reader(spec, ...)` /
`eval_reader(spec, split, ...)`. Below those, functions take only the values
they use (e.g. `reader.check_classes(num_classes, ...)`,
`pipeline.stream_seeds(seed, ...)`, `subset.select(..., data_config, ...)`).

Modules (each imports only modules listed below it, so there are no circles):

  prepare      `python -m sagan_jax.data.prepare NAME`: prepare a TFDS dataset
  digits       the embedded default data (scikit-learn's digits)
  pipeline     tf.data sources ('tfds', 'folder'): `make_source`,
               `train_dataset`, `make_eval_iterator`, the batch iterator
  tfds_source  the TFDS reader (builder, features, prepare message, sharding)
  folder       the image-folder scan and reader
  reader       what a tf.data reader hands the pipeline (`Reader`), tf.data
               options, the class-count check
  transforms   TensorFlow on the CPU (`import_tf`), train/eval image transforms
  subset       `data.classes` / `data.examples_per_class`: which images a run uses
  source       `DataSpec`, `Source`, `local_batch_size`, the registry of sources
               `SOURCES` and its calling convention (re-exported here)

Problems with the data raise `sagan_jax.errors.DataError`.
"""

from __future__ import annotations

from sagan_jax.data.source import SOURCES, DataSpec, Source, local_batch_size, source_module

__all__ = ["SOURCES", "DataSpec", "Source", "local_batch_size", "make_source",
           "source_module"]


def make_source(config, *, process_index: int = 0, process_count: int = 1,
                start_batch: int = 0) -> Source:
  """Builds the input source named by `config.data.source`."""
  spec = DataSpec.of(config)
  module = source_module(spec.data.source)
  if not hasattr(module, "make_source"):   # a tf.data reader
    from sagan_jax.data import pipeline
    module = pipeline
  return module.make_source(spec, process_index=process_index,
                            process_count=process_count, start_batch=start_batch)
