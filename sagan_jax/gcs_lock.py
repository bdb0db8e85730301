"""The workdir lock object on `gs://`: writes and deletes matched to a generation.

Cloud Storage has no locks, but every object has a generation (a number that
changes with every write) and a write or delete can be made conditional on it
(`if_generation_match`; 0: only if there is no object yet). `runlock` keeps
WORKDIR/RUNNING.json on `gs://` through this module when the client library
`google-cloud-storage` is importable (not a dependency of sagan_jax:
`pip install google-cloud-storage`):
- the lock is read with its generation (the metadata, then the content of that
  generation: read again if it changed in between);
- taking it creates the object only if it is still absent, or replaces a dead
  job's lock only if it is still the generation that was judged: of two jobs
  that start at the same moment exactly one write succeeds;
- each heartbeat replaces only this job's own last write, so a job whose lock
  another job took over (its heartbeat was judged too old) notices;
- release deletes only this job's own generation.
Without the library (or without a client, e.g. no credentials) `open_lock`
returns None, logs once why, and `runlock` keeps etils.epath's best-effort
create-if-absent.

google.cloud is imported only in `client_and_exceptions`, never at import time.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from sagan_jax import errors

READ_TRIES = 5   # reads of a lock object that changes between its metadata and its content
_best_effort_logged = False


def split_url(url: str) -> tuple[str, str]:
  """'gs://bucket/runs/x/RUNNING.json' -> ('bucket', 'runs/x/RUNNING.json')."""
  if not url.startswith("gs://"):
    raise ValueError(f"not a gs:// URL: {url!r}")
  bucket, _, name = url[len("gs://"):].partition("/")
  name = "/".join(p for p in name.split("/") if p)
  if not bucket or not name:
    raise ValueError(f"{url!r}: expected gs://BUCKET/OBJECT")
  return bucket, name


def client_and_exceptions() -> tuple[Any, Any]:
  """(a `storage.Client`, the `google.api_core.exceptions` module); ImportError without them."""
  from google.cloud import storage
  from google.api_core import exceptions
  return storage.Client(), exceptions


def _log_best_effort(url: str, why: str) -> None:
  global _best_effort_logged
  if not _best_effort_logged:
    _best_effort_logged = True
    logging.info("the workdir lock %s is best-effort (create-if-absent, no generation match): "
                 "%s", url, why)


def open_lock(url: str) -> GcsObject | None:
  """The lock object `url` (gs://...) through the client library, or None without it."""
  try:
    client, exceptions = client_and_exceptions()
  except ImportError:
    _log_best_effort(url, "google-cloud-storage is not installed")
    return None
  except Exception as e:  # noqa: BLE001 - e.g. no credentials: as without the library
    _log_best_effort(url, f"no Cloud Storage client ({type(e).__name__}: {e})")
    return None
  return GcsObject(client, exceptions, url)


class GcsObject:
  """One object, read with its generation and written or deleted only over a generation."""

  def __init__(self, client: Any, exceptions: Any, url: str):
    self.url = url
    bucket, self.name = split_url(url)
    self._bucket = client.bucket(bucket)
    self._exc = exceptions
    self.generation: int | None = None   # of this job's last write; None: not (any more) ours

  def read(self) -> tuple[bytes | None, int]:
    """The content and its generation; (None, 0) if there is no object."""
    for _ in range(READ_TRIES):
      blob = self._bucket.get_blob(self.name)
      if blob is None:
        return None, 0
      try:
        return blob.download_as_bytes(if_generation_match=blob.generation), int(blob.generation)
      except (self._exc.PreconditionFailed, self._exc.NotFound):
        continue   # replaced or deleted between the two requests
    raise errors.WorkdirBusyError(
        f"{self.url} changed {READ_TRIES} times while it was read (other jobs keep replacing "
        "it); choose another --workdir.")

  def write(self, data: bytes, if_generation_match: int) -> bool:
    """Writes only over that generation (0: only if absent); False if another write came first."""
    blob = self._bucket.blob(self.name)
    try:
      blob.upload_from_string(data, content_type="application/json",
                              if_generation_match=if_generation_match)
    except self._exc.PreconditionFailed:
      return False
    self.generation = int(blob.generation)
    return True

  def delete(self) -> None:
    """Deletes this job's own generation; leaves an object that is no longer ours."""
    if self.generation is None:
      return
    try:
      self._bucket.blob(self.name).delete(if_generation_match=self.generation)
    except (self._exc.NotFound, self._exc.PreconditionFailed):
      pass
    self.generation = None
