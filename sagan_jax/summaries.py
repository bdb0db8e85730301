"""Training's metric writer: the absl log plus TensorBoard event files, without TensorFlow
where it can.

clu's default writer writes its event files through TensorFlow, and importing
TensorFlow costs a process ~0.5 GB of resident memory (measured: 176 MB for
`import jax` and its CPU backend, 700 MB with `import tensorflow`) and seconds
of start-up. A local workdir needs none of it: `tensorboard`'s own
protobufs, framed as TFRecords here, write the same scalars, images and
hyperparameters. A remote workdir (`gs://...`) keeps clu's
TensorFlow writer, whose file system reaches it (such runs read their data
through tf.data anyway).

    make = writer_factory(workdir)     # imports what the writer needs
    writer = make(is_chief)            # chief: log + events; others: log only
    writer.write_scalars(step, {...}); writer.write_images(step, {...}); writer.close()
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from typing import Any, Callable, Mapping

import numpy as np
from absl import logging


class LogWriter:
  """Scalars to the absl INFO log, one line per call (clu's LoggingWriter's format)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
              for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("[Hyperparameters] %s", dict(hparams))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  head = struct.pack("<Q", len(data))
  return (head + struct.pack("<I", masked_crc32c(head)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


class EventWriter(LogWriter):
  """LogWriter plus a TensorBoard event file in `logdir`: tensorboard's protobufs in TFRecord
  framing, written here (tensorboard's own writer imports TensorFlow when it is installed)."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(_record(self._event(wall_time=time.time(), file_version="brain.Event:2")
                             .SerializeToString()))
    self._file.flush()

  def _add(self, step: int, summary) -> None:
    event = self._event(wall_time=time.time(), step=int(step), summary=summary)
    self._file.write(_record(event.SerializeToString()))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    super().write_scalars(step, scalars)
    S = self._summary
    self._add(step, S(value=[S.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: {tag: uint8 [N, H, W, 3]}; each of the N is one image (tag/0, tag/1, ...)."""
    super().write_images(step, images)
    S = self._summary
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      for i, img in enumerate(batch):
        name = tag if len(batch) == 1 else f"{tag}/{i}"
        values.append(S.Value(tag=name, image=S.Image(
            height=img.shape[0], width=img.shape[1], colorspace=img.shape[2],
            encoded_image_string=_png(img))))
    self._add(step, S(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    super().write_hparams(hparams)
    from tensorboard.plugins.hparams import summary_v2
    self._add(0, summary_v2.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def writer_factory(workdir: str) -> Callable[[bool], Any]:
  """A function of is_chief -> the run's writer; imports the writer's libraries now (clu and
  TensorFlow only for a remote workdir)."""
  if "://" in workdir:
    from sagan_jax import tf_setup
    tf_setup.import_tf()            # quietly, before clu imports it
    from clu import metric_writers  # TensorFlow's file systems reach gs:// and the like
    return lambda is_chief: metric_writers.create_default_writer(
        workdir, just_logging=not is_chief, asynchronous=False)
  from tensorboard.compat.proto import event_pb2  # noqa: F401 (the import cost here)
  return lambda is_chief: EventWriter(workdir) if is_chief else LogWriter()
