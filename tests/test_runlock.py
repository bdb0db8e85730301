"""One training job per workdir: the lock's decisions, in-process, and with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from sagan_jax import errors, integrity, runlock
from tests.conftest import ROOT
from tests.test_cli import _env as _cli_env

HOST = socket.gethostname()


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid   # (reused only after the pid space wraps)


# ----------------------------------------------------------------------------
# The pure decision

def test_judge_takes_a_free_workdir_and_refuses_a_live_job():
  now = 1000.0
  assert runlock.judge(None, host=HOST, now=now) == runlock.Verdict(True)
  live = {"host": HOST, "pid": 7, "heartbeat": now - 5}
  assert not runlock.judge(live, host=HOST, now=now, alive=lambda pid: True).take
  other = {"host": "elsewhere", "pid": 7, "heartbeat": now - 5}
  assert not runlock.judge(other, host=HOST, now=now, alive=lambda pid: False).take


def test_judge_takes_over_a_dead_pid_here_or_an_old_heartbeat_anywhere():
  now = 1000.0
  dead_here = {"host": HOST, "pid": 7, "heartbeat": now - 5}
  v = runlock.judge(dead_here, host=HOST, now=now, alive=lambda pid: False)
  assert v.take and "pid 7 on this host is gone" in v.stale_reason
  old = {"host": "elsewhere", "pid": 7, "heartbeat": now - 301}
  v = runlock.judge(old, host=HOST, now=now, alive=lambda pid: True, stale_after=300)
  assert v.take and "heartbeat is 301s old" in v.stale_reason
  fresh = {"host": "elsewhere", "pid": 7, "heartbeat": now - 299}
  assert not runlock.judge(fresh, host=HOST, now=now, alive=lambda pid: True,
                           stale_after=300).take


# ----------------------------------------------------------------------------
# In one process

def test_second_lock_is_refused_until_the_first_is_released(tmp_path):
  wd = str(tmp_path / "run")
  first = runlock.RunLock(wd)
  first.acquire()
  info = json.loads((tmp_path / "run" / runlock.LOCK_NAME).read_text())
  assert info["pid"] == os.getpid() and info["host"] == HOST and info["token"] == first.token
  with pytest.raises(errors.WorkdirBusyError,
                     match=rf"--workdir {wd} is in use by another training job: pid "
                           rf"{os.getpid()} on {HOST}.*Stop that job first.*another --workdir"):
    runlock.RunLock(wd).acquire()
  first.release()
  assert not (tmp_path / "run" / runlock.LOCK_NAME).exists()
  again = runlock.RunLock(wd)
  again.acquire()
  again.release()


def test_heartbeat_is_renewed(tmp_path):
  lock = runlock.RunLock(str(tmp_path), heartbeat_every=0.05)
  lock.acquire()
  path = tmp_path / runlock.LOCK_NAME
  first = json.loads(path.read_text())["heartbeat"]
  deadline = time.time() + 10
  while json.loads(path.read_text() or "{}").get("heartbeat", first) == first:
    assert time.time() < deadline, "heartbeat never renewed"
    time.sleep(0.05)
  lock.release()


@pytest.mark.parametrize("who", ["dead pid here", "old heartbeat elsewhere"])
def test_a_dead_jobs_lock_is_taken_over_with_a_warning(tmp_path, capsys, who):
  if who == "dead pid here":
    stale = {"host": HOST, "pid": _dead_pid(), "heartbeat": time.time()}
  else:
    stale = {"host": "lost-vm", "pid": 1, "heartbeat": time.time() - 1000}
  (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({**stale, "token": "old"}))
  lock = runlock.RunLock(str(tmp_path))
  lock.acquire()
  err = capsys.readouterr().err
  assert "warning: taking over the lock of a training job that is no longer running" in err
  assert ("is gone" if who == "dead pid here" else "heartbeat is 1000s old") in err
  assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["token"] == lock.token
  lock.release()


def test_a_live_job_on_another_host_is_refused(tmp_path):
  (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(
      {"host": "other-vm", "pid": 42, "heartbeat": time.time(), "token": "theirs",
       "coordinator": "10.0.0.2:8482", "process_count": 4, "hosts": ["a", "b", "c", "d"]}))
  with pytest.raises(errors.WorkdirBusyError,
                     match=r"pid 42 on other-vm \(4 processes, coordinator 10.0.0.2:8482\)"):
    runlock.RunLock(str(tmp_path)).acquire()
  assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["token"] == "theirs"


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
  lock = runlock.RunLock(str(tmp_path))
  lock.acquire()
  (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({"token": "someone else"}))
  lock.release()
  assert (tmp_path / runlock.LOCK_NAME).exists()


def test_other_processes_are_admitted_by_token_only(tmp_path):
  lock = runlock.RunLock(str(tmp_path))
  lock.acquire()
  runlock.RunLock(str(tmp_path)).admit(lock.token)
  with pytest.raises(errors.WorkdirBusyError, match="shared by all hosts"):
    runlock.RunLock(str(tmp_path)).admit("0123456789abcdef")
  lock.release()


# ----------------------------------------------------------------------------
# Real training processes

def _train_cmd(workdir: str, total_steps: int) -> list[str]:
  return [sys.executable, "-m", "sagan_jax.main", "--config", "configs/tiny.py",
          "--workdir", workdir, f"--config.total_steps={total_steps}",
          "--config.checkpoint_every=4", "--config.keep_checkpoints=10",
          "--config.log_every=1", "--config.sample_every=0", "--config.mesh.num_devices=1"]


def _start(cmd):
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  threading.Timer(600, proc.kill).start()   # nothing may hang the test run
  return proc


def _read_until(proc, prefix: str) -> list[str]:
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
  raise AssertionError("".join(lines))


def _files(wd: str) -> set[str]:
  return {os.path.relpath(os.path.join(r, f), wd) for r, _, fs in os.walk(wd) for f in fs}


@pytest.mark.slow
def test_two_trainers_on_one_workdir_then_a_kill9_relaunch(tmp_path):
  wd = str(tmp_path / "run")
  a = _start(_train_cmd(wd, 400))
  _read_until(a, "step 5/")                 # A trains and has saved step 4
  b = subprocess.run(_train_cmd(wd, 400), cwd=ROOT, env=_cli_env(), capture_output=True,
                     text=True, timeout=300)
  assert b.returncode == 2, b.stderr
  err = [l for l in b.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and f"is in use by another training job: pid {a.pid} on {HOST}" in err[0]
  assert "Traceback" not in b.stderr and "step 1/" not in b.stdout
  # B wrote nothing: no second TensorBoard event file, no checkpoint moved aside as damaged.
  events = [f for f in _files(wd) if "events.out.tfevents" in f]
  assert len(events) == 1, events
  assert not any("damaged" in f for f in _files(wd))
  # A goes on; kill -9 it mid-training: its lock stays behind, naming the dead pid.
  _read_until(a, "step ")
  a.send_signal(signal.SIGKILL)
  a.wait()
  a.stdout.close()
  stale = json.loads((tmp_path / "run" / runlock.LOCK_NAME).read_text())
  assert stale["pid"] == a.pid
  cdir = tmp_path / "run" / "checkpoints"
  newest = integrity.list_dir(cdir).steps[-1]
  # The relaunch takes the dead job's lock over with a warning and finishes.
  total = newest + 4
  c = subprocess.run(_train_cmd(wd, total), cwd=ROOT, env=_cli_env(), capture_output=True,
                     text=True, timeout=600)
  assert c.returncode == 0, c.stderr
  assert f"taking over the lock of a training job that is no longer running (pid {a.pid}" in (
      c.stderr)
  assert f"step {total}/{total}" in c.stdout and f"resuming from step {newest} " in c.stdout
  listing = integrity.list_dir(cdir)
  assert listing.steps[-1] == total and listing.aside == ()   # none taken for damaged
  for s in listing.steps:
    assert integrity.check(cdir / str(s)).ok, s
  assert not (tmp_path / "run" / runlock.LOCK_NAME).exists()   # released at the end


def test_a_workdir_only_the_lock_created_is_removed_again(tmp_path):
  wd = tmp_path / "new" / "run"
  lock = runlock.RunLock(str(wd))
  lock.acquire()
  assert (wd / runlock.LOCK_NAME).exists()
  lock.release()
  assert not wd.exists()      # a start that failed before writing leaves nothing
  lock = runlock.RunLock(str(wd))
  lock.acquire()
  (wd / "checkpoints").mkdir()
  lock.release()
  assert (wd / "checkpoints").is_dir() and not (wd / runlock.LOCK_NAME).exists()
