"""The workdir lock on gs://: generation-matched writes through an in-memory Cloud Storage.

The fake below stands in for `google.cloud.storage` and `google.api_core.exceptions`
(installed in sys.modules, so gcs_lock's own imports are the ones tested): objects with
generations, and writes, reads and deletes that honour `if_generation_match` as GCS does.
"""

from __future__ import annotations

import ast
import json
import logging
import socket
import sys
import time
import types

import pytest
from etils import epath

from sagan_jax import errors, gcs_lock, runlock
from tests.conftest import ROOT

HOST = socket.gethostname()
WORKDIR = "gs://bucket/runs/x"
NAME = "runs/x/RUNNING.json"


class GoogleAPICallError(Exception):
  pass


class PreconditionFailed(GoogleAPICallError):
  pass


class NotFound(GoogleAPICallError):
  pass


class Store:
  """The objects of every bucket: {(bucket, name): (data, generation)}, and a log of calls."""

  def __init__(self):
    self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
    self.log: list[tuple] = []
    self.next_generation = 1000
    self.before_upload = None   # a callable run once before the next upload (a racing job)

  def put(self, name: str, info: dict, bucket: str = "bucket") -> int:
    self.next_generation += 1
    self.objects[(bucket, name)] = (json.dumps(info).encode(), self.next_generation)
    return self.next_generation

  def info(self, name: str = NAME, bucket: str = "bucket") -> dict | None:
    found = self.objects.get((bucket, name))
    return json.loads(found[0]) if found else None

  def generation(self, name: str = NAME, bucket: str = "bucket") -> int:
    found = self.objects.get((bucket, name))
    return found[1] if found else 0


class Blob:
  def __init__(self, store: Store, bucket: str, name: str, generation: int | None = None):
    self.store, self.key, self.generation = store, (bucket, name), generation

  def _check(self, if_generation_match):
    current = self.store.objects.get(self.key, (None, 0))[1]
    if if_generation_match is not None and if_generation_match != current:
      raise PreconditionFailed(f"generation {current}, not {if_generation_match}")

  def download_as_bytes(self, if_generation_match=None):
    self.store.log.append(("download", if_generation_match))
    if self.key not in self.store.objects:
      raise NotFound(self.key)
    self._check(if_generation_match)
    return self.store.objects[self.key][0]

  def upload_from_string(self, data, content_type=None, if_generation_match=None):
    self.store.log.append(("upload", if_generation_match))
    hook, self.store.before_upload = self.store.before_upload, None
    if hook is not None:
      hook()
    self._check(if_generation_match)
    self.store.next_generation += 1
    self.generation = self.store.next_generation
    self.store.objects[self.key] = (data.encode() if isinstance(data, str) else data,
                                    self.generation)

  def delete(self, if_generation_match=None):
    self.store.log.append(("delete", if_generation_match))
    if self.key not in self.store.objects:
      raise NotFound(self.key)
    self._check(if_generation_match)
    del self.store.objects[self.key]


class Bucket:
  def __init__(self, store: Store, name: str):
    self.store, self.name = store, name

  def blob(self, name: str) -> Blob:
    return Blob(self.store, self.name, name)

  def get_blob(self, name: str) -> Blob | None:
    self.store.log.append(("metadata", name))
    found = self.store.objects.get((self.name, name))
    return Blob(self.store, self.name, name, found[1]) if found else None


@pytest.fixture
def store(monkeypatch) -> Store:
  """An in-memory GCS behind `from google.cloud import storage` / `google.api_core`."""
  s = Store()
  storage = types.ModuleType("google.cloud.storage")
  storage.Client = lambda: types.SimpleNamespace(bucket=lambda name: Bucket(s, name))
  exceptions = types.ModuleType("google.api_core.exceptions")
  exceptions.GoogleAPICallError = GoogleAPICallError
  exceptions.PreconditionFailed = PreconditionFailed
  exceptions.NotFound = NotFound
  cloud = types.ModuleType("google.cloud")
  cloud.storage = storage
  api_core = types.ModuleType("google.api_core")
  api_core.exceptions = exceptions
  for name, module in [("google.cloud", cloud), ("google.cloud.storage", storage),
                       ("google.api_core", api_core),
                       ("google.api_core.exceptions", exceptions)]:
    monkeypatch.setitem(sys.modules, name, module)
  return s


def _stale(age: float = 1000) -> dict:
  return {"host": "lost-vm", "pid": 1, "heartbeat": time.time() - age, "token": "old",
          "started": "yesterday"}


def test_split_url():
  assert gcs_lock.split_url("gs://bucket/runs/x/RUNNING.json") == ("bucket", NAME)
  assert gcs_lock.split_url("gs://b/RUNNING.json") == ("b", "RUNNING.json")
  assert gcs_lock.split_url("gs://b//a///RUNNING.json") == ("b", "a/RUNNING.json")
  for bad in ["gs://", "gs://bucket", "gs://bucket/", "/local/RUNNING.json"]:
    with pytest.raises(ValueError):
      gcs_lock.split_url(bad)


def test_a_second_job_is_refused_while_the_first_holds_the_lock(store):
  first = runlock.RunLock(WORKDIR)
  first.acquire()
  assert store.info()["token"] == first.token and store.info()["pid"] == first.info["pid"]
  assert ("upload", 0) in store.log   # created only if absent
  uploads = len([c for c in store.log if c[0] == "upload"])
  with pytest.raises(errors.WorkdirBusyError,
                     match=rf"--workdir {WORKDIR} is in use by another training job: pid "
                           rf"\d+ on {HOST}.*Stop that job first"):
    runlock.RunLock(WORKDIR).acquire()
  assert len([c for c in store.log if c[0] == "upload"]) == uploads   # it wrote nothing
  assert store.info()["token"] == first.token
  runlock.RunLock(WORKDIR).admit(first.token)   # the job's other processes read it too
  with pytest.raises(errors.WorkdirBusyError, match="shared by all hosts"):
    runlock.RunLock(WORKDIR).admit("0123456789abcdef")
  first.release()
  assert store.info() is None


def test_of_two_jobs_racing_for_a_free_workdir_exactly_one_wins(store):
  winner = runlock.RunLock(WORKDIR, coordinator="10.0.0.7:8482", process_count=2)
  loser = runlock.RunLock(WORKDIR)
  # The loser has read "no lock" and is about to create it; the winner's create lands first.
  store.before_upload = lambda: winner.acquire(["host-a", "host-b"])
  with pytest.raises(errors.WorkdirBusyError,
                     match=r"in use by another training job: pid \d+ on .* \(2 processes, "
                           r"coordinator 10.0.0.7:8482\)"):
    loser.acquire()
  assert [c for c in store.log if c[0] == "upload"] == [("upload", 0), ("upload", 0)]
  assert store.info()["token"] == winner.token
  assert loser._thread is None and loser._gcs.generation is None
  loser.release()                      # deletes nothing: it never held the lock
  assert store.info()["token"] == winner.token
  winner.release()
  assert store.info() is None


def test_a_stale_lock_is_replaced_over_the_generation_that_was_judged(store, capsys):
  generation = store.put(NAME, _stale())
  lock = runlock.RunLock(WORKDIR)
  lock.acquire()
  err = capsys.readouterr().err
  assert "warning: taking over the lock of a training job that is no longer running " \
         "(pid 1 on lost-vm" in err and "heartbeat is 1000s old" in err
  assert ("download", generation) in store.log and ("upload", generation) in store.log
  assert store.info()["token"] == lock.token and store.generation() > generation
  lock.release()


def test_a_stale_lock_replaced_by_another_job_first_is_not_taken_over(store, capsys):
  store.put(NAME, _stale())
  lock = runlock.RunLock(WORKDIR)
  store.before_upload = lambda: store.put(NAME, {"host": "vm-2", "pid": 55, "token": "new",
                                                 "heartbeat": time.time()})
  with pytest.raises(errors.WorkdirBusyError, match="pid 55 on vm-2"):
    lock.acquire()
  assert "taking over" not in capsys.readouterr().err
  assert store.info()["token"] == "new"


def test_a_lock_changing_while_it_is_read_is_read_again(store, monkeypatch):
  store.put(NAME, _stale())
  real = Blob.download_as_bytes
  calls = []

  def replaced_once(blob, if_generation_match=None):
    if not calls:   # another job writes between the metadata and the content
      store.put(NAME, {"host": "vm-3", "pid": 9, "token": "t", "heartbeat": time.time()})
    calls.append(if_generation_match)
    return real(blob, if_generation_match=if_generation_match)

  monkeypatch.setattr(Blob, "download_as_bytes", replaced_once)
  with pytest.raises(errors.WorkdirBusyError, match="pid 9 on vm-3"):
    runlock.RunLock(WORKDIR).acquire()
  assert len(calls) == 2 and calls[1] == store.generation()


def test_heartbeats_renew_over_our_own_generation_and_release_deletes_only_it(store):
  lock = runlock.RunLock(WORKDIR, heartbeat_every=0.02)
  lock.acquire()
  first = store.generation()
  deadline = time.time() + 10
  while store.generation() < first + 3:
    assert time.time() < deadline, "heartbeat never renewed"
    time.sleep(0.02)
  renewals = [c[1] for c in store.log if c[0] == "upload"][1:]
  assert renewals[:2] == [first, first + 1]   # each over the generation of the previous one
  lock.release()
  assert store.info() is None
  deletes = [c for c in store.log if c[0] == "delete"]
  assert len(deletes) == 1 and deletes[0][1] >= first + 3


def test_release_leaves_a_lock_that_is_no_longer_ours(store):
  lock = runlock.RunLock(WORKDIR, heartbeat_every=3600)
  lock.acquire()
  ours = store.generation()
  store.put(NAME, {"host": "vm-2", "pid": 55, "token": "theirs", "heartbeat": time.time()})
  lock.release()
  assert ("delete", ours) in store.log and store.info()["token"] == "theirs"


def test_a_heartbeat_after_a_take_over_warns_once_and_stops(store, capsys):
  lock = runlock.RunLock(WORKDIR, heartbeat_every=0.02)
  lock.acquire()
  store.put(NAME, {"host": "vm-2", "pid": 55, "token": "theirs", "heartbeat": time.time(),
                   "started": "now"})
  deadline = time.time() + 10
  while lock._thread.is_alive():
    assert time.time() < deadline, "the heartbeat went on renewing a lock that is not ours"
    time.sleep(0.02)
  uploads = len([c for c in store.log if c[0] == "upload"])
  time.sleep(0.1)
  assert len([c for c in store.log if c[0] == "upload"]) == uploads   # no more renewals
  warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1, warnings
  assert "another training job took over the workdir lock" in warnings[0]
  assert "pid 55 on vm-2" in warnings[0] and "no longer renews" in warnings[0]
  lock.release()
  assert store.info()["token"] == "theirs"
  assert not [c for c in store.log if c[0] == "delete"]


def test_a_retried_write_that_landed_is_still_ours(store, monkeypatch):
  real = Blob.upload_from_string

  def lands_then_fails(blob, data, content_type=None, if_generation_match=None):
    real(blob, data, content_type=content_type, if_generation_match=if_generation_match)
    raise PreconditionFailed("the retry of a write whose first try landed")

  monkeypatch.setattr(Blob, "upload_from_string", lands_then_fails)
  lock = runlock.RunLock(WORKDIR, heartbeat_every=3600)
  lock.acquire()
  assert lock._gcs.generation == store.generation() and store.info()["token"] == lock.token
  lock.release()
  assert store.info() is None


def test_without_the_client_library_the_best_effort_lock_is_used(monkeypatch, tmp_path,
                                                                 caplog):
  for name in ["google.cloud", "google.cloud.storage"]:
    monkeypatch.setitem(sys.modules, name, None)   # `from google.cloud import storage` fails
  monkeypatch.setattr(gcs_lock, "_best_effort_logged", False)
  caplog.set_level(logging.INFO, logger="absl")
  lock = runlock.RunLock(WORKDIR)
  runlock.RunLock(WORKDIR)
  assert lock._gcs is None
  logged = [r.getMessage() for r in caplog.records if "best-effort" in r.getMessage()]
  assert len(logged) == 1 and "google-cloud-storage is not installed" in logged[0]
  # The old create-if-absent through epath (a local epath.Path stands in for gs://).
  lock.path = epath.Path(tmp_path) / runlock.LOCK_NAME
  lock.acquire()
  assert lock._fd is None and json.loads(lock.path.read_text())["token"] == lock.token
  lock.release()
  assert not lock.path.exists()


def test_other_remote_schemes_keep_the_epath_lock(store):
  assert runlock.RunLock("s3://bucket/run")._gcs is None
  assert runlock.RunLock(WORKDIR)._gcs is not None


@pytest.mark.parametrize("module", ["sagan_jax/runlock.py", "sagan_jax/gcs_lock.py"])
def test_google_cloud_is_not_imported_at_module_import_time(module):
  with open(f"{ROOT}/{module}") as f:
    tree = ast.parse(f.read())
  for node in tree.body:   # (imports inside functions are lazy)
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    assert not [n for n in names if n.startswith("google")], (module, names)
