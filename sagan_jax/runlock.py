"""One training job per workdir: the lock file WORKDIR/RUNNING.json.

Process 0 of a training job takes the lock before anything is written and
holds it until the job ends (normally, with an error, on SIGTERM); the other
processes of the job are admitted by the token process 0 broadcasts to them.
The file names the job: host and pid of process 0, every process's host,
start time, the coordinator of a multi-process job, the command, and a
heartbeat timestamp that a background thread renews every
`HEARTBEAT_EVERY_S` seconds.

A second job on the same workdir is refused (`errors.WorkdirBusyError`,
exit 2) before it writes anything. A lock left behind by a job that died
does not block the relaunch; it is taken over with a `warning:` when
- its process 0 ran on this host and that pid is gone (kill -9, a crash), or
- its heartbeat is older than `STALE_AFTER_S` (any host: a lost VM).

Local and network filesystems: the file is held with `fcntl.flock` for the
whole run, so the check and the take-over are atomic between processes of
this host (and of other hosts where the filesystem supports flock, e.g. NFS
with lockd), and the kernel drops the flock when the process dies.
`gs://` has no locks, but its objects have generations: when the client
library `google-cloud-storage` is importable (not a dependency of sagan_jax:
`pip install google-cloud-storage`), the lock object is written only under a
generation precondition (`gcs_lock`): created only if absent, a dead job's
replaced only if it is still the generation that was judged, each heartbeat
only over this job's own last write, deleted only if still ours. Of two jobs started at the
same moment exactly one wins, the other is refused as above; a job whose lock
another job took over (its heartbeat had been judged stale) warns once and
stops renewing it. Without the library (logged once) and on other remote paths
(etils.epath: no locks, no generation-matched create) the lock is
create-if-absent plus the heartbeat, so two jobs started within the same
second or so can both pass the check (one read and one write apart); a job
started any later is refused.

`sample`, `evaluate` and `sagan_jax.load` only read a run and never take the lock.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import Any

from etils import epath

from sagan_jax import errors, gcs_lock, utils

LOCK_NAME = "RUNNING.json"
HEARTBEAT_EVERY_S = 30.0   # how often the running job renews the heartbeat
STALE_AFTER_S = 300.0      # a lock whose heartbeat is older is a dead job's (any host)


def lock_path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / LOCK_NAME


def _remote(workdir: str) -> bool:
  return "://" in workdir


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


def describe_job(info: dict[str, Any]) -> str:
  """'pid 123 on host-a (2 processes, coordinator 10.0.0.2:8482), started ..., heartbeat 12s ago'."""
  extra = []
  if len(info.get("hosts") or []) > 1 or info.get("coordinator"):
    extra.append(f"{info.get('process_count', len(info.get('hosts') or []))} processes")
  if info.get("coordinator"):
    extra.append(f"coordinator {info['coordinator']}")
  age = time.time() - float(info.get("heartbeat", 0))
  return (f"pid {info.get('pid')} on {info.get('host')}" +
          (f" ({', '.join(extra)})" if extra else "") +
          f", started {info.get('started', '?')}, heartbeat {age:.0f}s ago")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What to do with the lock found in a workdir: take it (maybe over a dead job's) or refuse."""
  take: bool
  stale_reason: str = ""   # why the found lock is a dead job's ("" if there was none)


def judge(info: dict[str, Any] | None, *, host: str, now: float, alive=pid_alive,
          stale_after: float = STALE_AFTER_S) -> Verdict:
  """The pure decision on a lock `info` found in the workdir (None or {} if there is none)."""
  if not info:
    return Verdict(True)
  age = now - float(info.get("heartbeat", 0))
  if info.get("host") == host and not alive(int(info.get("pid", -1))):
    return Verdict(True, f"its pid {info.get('pid')} on this host is gone")
  if age > stale_after:
    return Verdict(True, f"its heartbeat is {age:.0f}s old (more than {stale_after:.0f}s)")
  return Verdict(False)


def busy_message(workdir: str, info: dict[str, Any], stale_after: float = STALE_AFTER_S) -> str:
  return (f"--workdir {workdir} is in use by another training job: {describe_job(info)} "
          f"({lock_path(workdir)}). Stop that job first (SIGTERM, e.g. `kill -TERM "
          f"{info.get('pid')}` on {info.get('host')}, saves and exits) or choose another "
          f"--workdir. If that job is dead, its lock is taken over once its heartbeat is "
          f"older than {stale_after:.0f}s (or delete {lock_path(workdir)} if you are sure).")


def _read(path) -> dict[str, Any] | None:
  try:
    if isinstance(path, str):
      with open(path) as f:
        text = f.read()
    else:
      text = path.read_text()
  except (FileNotFoundError, OSError):
    return None
  return _parse(text)


def _parse(text: str) -> dict[str, Any] | None:
  try:
    info = json.loads(text) if text.strip() else None
  except ValueError:
    return None   # a torn write of a dead job: as if absent
  return info if isinstance(info, dict) else None


def _unknown() -> dict[str, Any]:
  """Stands in for a lock that is gone or unreadable by the time the message is written."""
  return {"host": "?", "pid": "?", "heartbeat": time.time()}


def _command() -> str:
  argv = list(sys.argv)
  if argv and argv[0].endswith(os.path.join("sagan_jax", "main.py")):
    argv[0:1] = ["python", "-m", "sagan_jax.main"]
  return " ".join(argv)


class RunLock:
  """The workdir lock of one job; `acquire` on process 0, `admit` on the others."""

  def __init__(self, workdir: str, *, coordinator: str | None = None,
               process_count: int = 1, heartbeat_every: float = HEARTBEAT_EVERY_S,
               stale_after: float = STALE_AFTER_S):
    self.workdir = workdir
    # Local paths through os (epath may route them through TensorFlow's gfile).
    self.path = str(lock_path(workdir)) if not _remote(workdir) else lock_path(workdir)
    self._made_dir: str | None = None   # the workdir, if this lock created it
    # gs:// with google-cloud-storage: generation-matched writes (else None: epath or flock).
    self._gcs = gcs_lock.open_lock(str(self.path)) if workdir.startswith("gs://") else None
    self.coordinator = coordinator
    self.process_count = process_count
    self.heartbeat_every = heartbeat_every
    self.stale_after = stale_after
    self.token = secrets.token_hex(8)
    self.info: dict[str, Any] = {}
    self._fd: int | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._io = threading.Lock()

  # -- process 0 -------------------------------------------------------------
  def acquire(self, hosts: list[str] | None = None) -> None:
    """Takes the lock (over a dead job's, with a warning) or raises WorkdirBusyError."""
    host = socket.gethostname()
    self.info = {"token": self.token, "host": host, "pid": os.getpid(),
                 "hosts": hosts or [host], "process_count": self.process_count,
                 "coordinator": self.coordinator, "command": _command(),
                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "heartbeat": time.time()}
    generation = 0
    if self._gcs is not None:
      found, generation = self._gcs_read()
    elif _remote(self.workdir):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      found = _read(self.path)
    else:
      if not os.path.isdir(self.workdir):
        os.makedirs(self.workdir)
        self._made_dir = self.workdir
      found = self._flock()
    verdict = judge(found, host=host, now=time.time(), stale_after=self.stale_after)
    if not verdict.take:
      self._close_fd()
      self._remove_made_dir()
      raise errors.WorkdirBusyError(busy_message(self.workdir, found, self.stale_after))
    if self._gcs is not None:
      winner = self._gcs_write(generation)   # only over what was judged (0: only if absent)
      if winner is not None:                 # another job wrote first: it won the race
        raise errors.WorkdirBusyError(busy_message(self.workdir, winner or _unknown(),
                                                   self.stale_after))
    else:
      self._write()
    if verdict.stale_reason:
      utils.say("warning: taking over the lock of a training job that is no longer running "
                "(%s; %s)", describe_job(found), verdict.stale_reason, err=True)
    self._thread = threading.Thread(target=self._beat, name="sagan_runlock", daemon=True)
    self._thread.start()

  def _flock(self) -> dict[str, Any] | None:
    """Opens and flocks the lock file (the same inode as the path); what it held before."""
    import fcntl
    for _ in range(10):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        info = _read(self.path) or _unknown()
        raise errors.WorkdirBusyError(busy_message(self.workdir, info, self.stale_after))
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:   # (not a file its previous holder unlinked meanwhile)
        self._fd = fd
        return _read(self.path)
      os.close(fd)
    raise errors.WorkdirBusyError(f"--workdir {self.workdir}: could not take {self.path} "
                                  "(another job keeps replacing it); choose another --workdir.")

  # -- gs:// through google-cloud-storage --------------------------------------
  def _gcs_read(self) -> tuple[dict[str, Any] | None, int]:
    data, generation = self._gcs.read()
    return _parse(data.decode(errors="replace") if data is not None else ""), generation

  def _gcs_write(self, generation: int) -> dict[str, Any] | None:
    """Writes the lock over `generation`: None if it is ours now, else the lock another job
    wrote first ({} if it is gone or unreadable again)."""
    if self._gcs.write(json.dumps(self.info, indent=1).encode(), generation):
      return None
    found, now = self._gcs_read()
    if found and found.get("token") == self.token:   # a retried write whose first try landed
      self._gcs.generation = now
      return None
    return found or {}

  def _renew_gcs(self) -> bool:
    """One heartbeat over our own last write; False (warned once) once the lock is not ours."""
    with self._io:
      if self._gcs.generation is None:   # released
        return False
      other = self._gcs_write(self._gcs.generation)
      if other is None:
        return True
      self._gcs.generation = None
    utils.say("warning: another training job took over the workdir lock %s (%s): this job's "
              "heartbeat was judged too old. This job goes on but no longer renews the lock; "
              "two jobs now write to --workdir %s: stop one of them.", self.path,
              describe_job(other or _unknown()), self.workdir, err=True)
    return False

  def _write(self) -> None:
    data = json.dumps(self.info, indent=1)
    with self._io:
      if self._fd is not None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data.encode())
        os.fsync(self._fd)
      elif isinstance(self.path, str):
        with open(self.path, "w") as f:
          f.write(data)
      else:
        self.path.write_text(data)

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_every):
      self.info["heartbeat"] = time.time()
      try:
        if self._gcs is None:
          self._write()
        elif not self._renew_gcs():
          return
      except Exception as e:  # noqa: BLE001 - a full disk, a network or storage hiccup: go on
        utils.say("warning: could not renew the workdir lock %s: %s", self.path, e, err=True)

  def release(self) -> None:
    """Removes the lock if it is still this job's; idempotent."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=5)
    self._thread = None
    with self._io:
      if self._gcs is not None:
        self._gcs.delete()   # (only our own generation)
      elif self.info and (_read(self.path) or {}).get("token") == self.token:
        try:
          os.unlink(self.path) if isinstance(self.path, str) else self.path.unlink()
        except FileNotFoundError:
          pass
      self.info = {}
      self._close_fd()
      self._remove_made_dir()

  def _remove_made_dir(self) -> None:
    """A workdir this lock created and nothing else wrote to is removed again."""
    if self._made_dir is not None:
      try:
        os.rmdir(self._made_dir)
      except OSError:   # not empty: the run wrote something
        pass
      self._made_dir = None

  def _close_fd(self) -> None:
    if self._fd is not None:
      os.close(self._fd)   # (drops the flock)
      self._fd = None

  def read(self) -> dict[str, Any] | None:
    """The lock as it is now in the workdir (None if there is none or it is unreadable)."""
    return self._gcs_read()[0] if self._gcs is not None else _read(self.path)

  # -- other processes ---------------------------------------------------------
  def admit(self, token: str) -> None:
    """A process other than 0: checks that the lock it sees is process 0's of this job."""
    self.token = token
    found = self.read() or {}
    if found.get("token") != token:
      raise errors.WorkdirBusyError(
          f"--workdir {self.workdir}: process 0 of this job took the lock {self.path} but "
          f"this process sees {'another job' + chr(39) + 's lock' if found else 'no lock'} "
          "there. Every process must see the same workdir: give a directory shared by all "
          "hosts (a network filesystem or gs://).")


def acquire_for_job(workdir: str) -> RunLock:
  """Takes the lock on process 0 and admits the other processes of the job (a collective).

  Every process calls it at the same point; a refusal is raised on all of them.
  """
  import jax
  import numpy as np
  count = jax.process_count()
  lock = RunLock(workdir, coordinator=_coordinator() if count > 1 else None,
                 process_count=count)
  if count == 1:
    lock.acquire()
    return lock
  from jax.experimental import multihost_utils
  hosts = [bytes(np.asarray(h)).rstrip(b" ").decode(errors="replace") for h in
           multihost_utils.process_allgather(
               np.frombuffer(socket.gethostname().encode()[:64].ljust(64), np.uint8))]
  refusal = None
  if jax.process_index() == 0:
    try:
      lock.acquire(hosts)
    except errors.WorkdirBusyError as e:
      refusal = e
  code = np.frombuffer(bytes.fromhex(lock.token), np.uint8).copy()
  shared = np.asarray(multihost_utils.broadcast_one_to_all(
      np.concatenate([[np.uint8(refusal is not None)], code])))
  if jax.process_index() == 0:
    if refusal is not None:
      raise refusal
    return lock
  if shared[0]:
    raise errors.WorkdirBusyError(busy_message(workdir, lock.read() or _unknown()))
  lock.admit(bytes(shared[1:].astype(np.uint8)).hex())
  return lock


def _coordinator() -> str | None:
  try:
    from jax._src import distributed as jax_distributed
    return getattr(jax_distributed.global_state, "coordinator_address", None)
  except Exception:  # noqa: BLE001 - an internal of JAX: only for the message
    return None
