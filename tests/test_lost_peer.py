"""A lost process of a multi-process job: one message per survivor, a prompt exit, a resume.

The fast tests check the recognition of the errors, the message and the exit
(status 75, no traceback, the lock released) in a child process; the slow one
trains with two real processes (`python -m sagan_jax.main --coordinator ...`),
SIGKILLs one mid-training, and relaunches both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sagan_jax import integrity, peers, runlock
from tests.conftest import ROOT, free_port
from tests.test_multiprocess_train import _child_env

GLOO = ("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] "
        "Read error [127.0.0.1]:20905: Connection reset by peer")


def test_lost_peer_errors_are_recognised_only_in_multi_process_jobs():
  assert peers.is_lost_peer(RuntimeError(GLOO), 2)
  assert not peers.is_lost_peer(RuntimeError(GLOO), 1)
  assert peers.is_lost_peer(RuntimeError("UNAVAILABLE: The following tasks are unhealthy "
                                         "(stopped sending heartbeats): 1"), 4)
  try:  # a wrapped one: the cause is looked at too
    try:
      raise RuntimeError(GLOO)
    except RuntimeError as e:
      raise ValueError("saving failed") from e
  except ValueError as wrapped:
    assert peers.is_lost_peer(wrapped, 2)
  assert not peers.is_lost_peer(ValueError("incompatible shapes (8, 3) and (4, 3)"), 2)
  assert not peers.is_lost_peer(KeyboardInterrupt(), 2)


def test_lost_peer_message_names_process_step_checkpoint_and_command():
  msg = peers.lost_message(lost=[1], me=0, count=2, step=37, newest=36, workdir="/runs/a",
                           command="python -m sagan_jax.main --workdir /runs/a",
                           cause="JaxRuntimeError: Gloo ...")
  assert msg.startswith("process 1 of 2 stopped responding at step 37 (JaxRuntimeError")
  assert f"exit status {peers.EXIT_LOST_PEER}" in msg
  assert "newest complete checkpoint is step 36 (/runs/a/checkpoints/36)" in msg
  assert msg.endswith("Relaunch all 2 processes with the same command to resume: "
                      "python -m sagan_jax.main --workdir /runs/a")
  assert "(the coordinator)" in peers.lost_message(
      lost=[0], me=1, count=2, step=3, newest=None, workdir="w", command="c", cause="x")
  unknown = peers.lost_message(lost=None, me=0, count=4, step=None, newest=None,
                               workdir="w", command="c", cause="x")
  assert "which one is not known" in unknown and "during start-up" in unknown
  assert "no checkpoint was written yet" in unknown


def test_relaunch_command_reads_like_the_users():
  main = os.path.join(ROOT, "sagan_jax", "main.py")
  assert peers.relaunch_command([main, "--workdir", "w"]) == (
      "python -m sagan_jax.main --workdir w")


def test_exit_lost_peer_prints_one_line_releases_and_exits_75(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "8")
  code = textwrap.dedent(f"""
      import jax
      from sagan_jax import peers, runlock
      lock = runlock.RunLock({str(tmp_path)!r})
      lock.acquire()
      jax.process_count = lambda: 2      # as in a two-process job whose peer is gone
      try:
        raise RuntimeError({GLOO!r})
      except RuntimeError as e:
        assert peers.is_lost_peer(e, jax.process_count())
        peers.exit_lost_peer(e, step=9, workdir={str(tmp_path)!r}, release=lock.release)
      print("not reached")
  """)
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_child_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == peers.EXIT_LOST_PEER, r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, r.stderr
  assert "process 1 of 2 stopped responding at step 9" in errors[0]   # (of two: the other)
  assert "checkpoints/8" in errors[0]
  assert "Traceback" not in r.stderr and "not reached" not in r.stdout
  assert not (tmp_path / runlock.LOCK_NAME).exists()


# ----------------------------------------------------------------------------
# Two real processes

HEARTBEAT_S = 30


def _cmd(workdir: str, port: int, pid: int, total: int) -> list[str]:
  return [sys.executable, "-m", "sagan_jax.main", "--config", "configs/tiny.py",
          "--workdir", workdir, "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
          "--process_id", str(pid), f"--config.total_steps={total}",
          "--config.checkpoint_every=4", "--config.keep_checkpoints=3",
          "--config.log_every=1", "--config.sample_every=0",
          f"--config.heartbeat_timeout_s={HEARTBEAT_S}"]


def _start_pair(workdir: str, total: int) -> list[subprocess.Popen]:
  port = free_port()
  procs = [subprocess.Popen(_cmd(workdir, port, i, total), cwd=ROOT, env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    threading.Timer(600, p.kill).start()   # nothing may hang the test run
  return procs


@pytest.mark.slow
def test_sigkill_one_of_two_processes_then_relaunch_both(tmp_path):
  wd = str(tmp_path / "run")
  total = 400
  procs = _start_pair(wd, total)
  lines = []
  for line in procs[0].stdout:            # process 0 prints the progress
    lines.append(line)
    if line.startswith("step 6/"):       # checkpoint 4 was started two steps ago
      break
  else:
    raise AssertionError("".join(lines))
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  out, _ = procs[0].communicate(timeout=HEARTBEAT_S + 60)
  took = time.time() - killed_at
  procs[1].wait()
  out = "".join(lines) + out
  assert procs[0].returncode == peers.EXIT_LOST_PEER, out[-3000:]
  assert took < HEARTBEAT_S, (took, out[-3000:])
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, out[-3000:]
  assert "error: process 1 of 2 stopped responding at step " in errors[0]
  assert "Relaunch all 2 processes with the same command to resume: python -m " \
         "sagan_jax.main --config configs/tiny.py" in errors[0]
  for bad in ("Traceback", "Fatal Python error", "Check failure stack trace", "Aborted"):
    assert bad not in out, out[-3000:]
  cdir = tmp_path / "run" / "checkpoints"
  newest = integrity.list_dir(cdir).steps[-1]
  assert f"the newest complete checkpoint is step {newest} " in errors[0]
  assert integrity.check(cdir / str(newest)).ok
  assert not (tmp_path / "run" / runlock.LOCK_NAME).exists()   # the survivor released it

  # Relaunching both resumes from that checkpoint and finishes.
  end = newest + 4
  procs = _start_pair(wd, end)
  outs = [p.communicate(timeout=500)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  assert f"resuming from step {newest} " in outs[0] and f"step {end}/{end}" in outs[0]
  assert integrity.list_dir(cdir).steps[-1] == end
