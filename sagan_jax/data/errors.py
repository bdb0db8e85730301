"""The one exception the input pipelines raise for problems with the data."""

from __future__ import annotations

from sagan_jax.errors import UserError


class DataError(UserError, RuntimeError):
  """The data cannot be used as configured; the message says what to do.

  Raised by `sagan_jax.data.make_source` before the first batch is read
  (dataset not prepared, empty folder, class count mismatch, ...), and by the
  folder source's iterator when too many image files cannot be decoded.
  """
