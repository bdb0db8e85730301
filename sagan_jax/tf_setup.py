"""TensorFlow for the input pipeline and clu's writers, imported once, quietly.

TensorFlow's C++ start-up prints notices on stderr before any Python setting
can stop them (`oneDNN custom operations are on ...`, `cpu_feature_guard`,
`All log messages before absl::InitializeLog() ...`; TF_CPP_MIN_LOG_LEVEL does
not reach them). `import_tf` imports it with stderr captured, starts its
runtime (where the second round of notices comes from) and passes on every
captured line that is not one of those notices, so real errors still show.
GPUs and TPUs are hidden from it: JAX owns the accelerators. Commands that
read no data (sample, describe, convert) never import TensorFlow.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

from absl import logging

# TensorFlow's start-up notices: information, never a problem to act on.
_NOTICE = re.compile(r"oneDNN custom operations are on|cpu_feature_guard|"
                     r"All log messages before absl::InitializeLog|"
                     r"To enable the following instructions|rebuild TensorFlow with")

_tf = None


def import_tf():
  """TensorFlow with GPUs/TPUs hidden and its start-up notices kept off the console."""
  global _tf
  if _tf is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    captured = _captured_stderr()
    try:
      with captured:
        import tensorflow as tf
        _hide_accelerators(tf)
        tf.constant(0)   # starts TF's runtime now, inside the capture (its notices print again)
    finally:
      _replay(captured)   # also when the import failed: its own messages are not lost
    _tf = tf
  return _tf


def _hide_accelerators(tf) -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:  # TF already initialised, or no such kind
      if tf.config.get_visible_devices(kind):
        logging.warning("TensorFlow already sees %s devices (%s); the input pipeline may "
                        "take accelerator memory.", kind, e)


class _captured_stderr:
  """File descriptor 2 (C++ and Python alike) into a temporary file; `.lines` afterwards."""

  lines: list[str] = []

  def __enter__(self):
    sys.stderr.flush()
    self._file = tempfile.TemporaryFile(mode="w+b")
    self._saved = os.dup(2)
    os.dup2(self._file.fileno(), 2)
    self.lines: list[str] = []
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    self._file.seek(0)
    self.lines = self._file.read().decode("utf-8", "replace").splitlines()
    self._file.close()
    return False


def _replay(captured: _captured_stderr) -> None:
  """Every captured line but TensorFlow's notices back on stderr; the notices to the log."""
  for line in captured.lines:
    if _NOTICE.search(line):
      logging.debug("tensorflow: %s", line)
    elif line.strip():
      print(line, file=sys.stderr)
