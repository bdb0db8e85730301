"""A lost process in a multi-process job: one message, a prompt exit, a status to relaunch on.

When one process of a job dies (a preempted TPU worker, a lost VM, kill -9),
the next collective on every survivor fails (on CPU: `JaxRuntimeError: ...
Gloo all-reduce failed ... Connection reset by peer`), and the coordination
service marks the process dead once it has sent no heartbeat for
`config.heartbeat_timeout_s` seconds. Left alone, each survivor then waits
for shutdown barriers that can never complete and is aborted by JAX's C++
client (exit 134, a stack dump). Instead, the train loop hands such an error
to `exit_lost_peer`, which:

1. asks the survivors, through the coordination service's key-value store,
   which processes still answer (a few seconds; skipped if the coordinator
   itself is gone, which then is the likely lost one);
2. prints one `error: ...` line on stderr of every survivor: which process
   stopped responding, at which step, the newest complete checkpoint, and
   the command that resumes;
3. releases the workdir lock and ends the process with `os._exit(EXIT_LOST_PEER)`,
   without waiting for an in-flight checkpoint save or JAX's shutdown barrier
   (a save in flight is left as an unfinished temporary directory, never
   restored; the checkpoints before it are untouched).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from sagan_jax import integrity

EXIT_LOST_PEER = 75   # EX_TEMPFAIL: a temporary failure; relaunching all processes resumes
_PROBE_S = 4.0        # how long the survivors wait for each other's "still here"

# Texts of the errors a lost peer causes: collectives (gloo, NCCL, TPU ICI / DCN),
# the coordination service (heartbeats, barriers, RPCs to a dead coordinator).
_LOST_PATTERNS = re.compile(
    r"connection reset by peer|connection refused|broken pipe|socket closed|"
    r"gloo .*failed|nccl.*(error|failure)|stopped sending heartbeats|heartbeat timeout|"
    r"task.* (lost|unhealthy|died|crashed)|coordination service|barrier.*timed out|"
    r"timed out while waiting for .*barrier|deadline exceeded|unavailable:|"
    r"failed to connect to all addresses|peer.* (closed|disconnected)", re.IGNORECASE)


def is_lost_peer(error: BaseException, process_count: int) -> bool:
  """Whether `error` (or an error it was raised from) looks like a lost process of the job."""
  if process_count <= 1:
    return False
  seen = 0
  while error is not None and seen < 5:
    if _LOST_PATTERNS.search(f"{type(error).__name__}: {error}"):
      return True
    error, seen = error.__cause__ or error.__context__, seen + 1
  return False


def relaunch_command(argv: list[str] | None = None) -> str:
  """The command this process was started with, as the user would type it."""
  argv = list(sys.argv if argv is None else argv)
  if argv and argv[0].endswith(os.path.join("sagan_jax", "main.py")):
    argv[0:1] = ["python", "-m", "sagan_jax.main"]
  elif argv and argv[0] == "-c":
    argv = ["python", "-c", "..."] + argv[1:]
  return " ".join(argv)


def newest_checkpoint(workdir: str) -> int | None:
  """The newest complete step directory (its manifest was written before Orbax's rename)."""
  from sagan_jax import checkpointing
  steps = integrity.list_dir(checkpointing.checkpoint_dir(workdir)).steps
  return steps[-1] if steps else None


def lost_message(*, lost: list[int] | None, me: int, count: int, step: int | None,
                 newest: int | None, workdir: str, command: str, cause: str) -> str:
  """The one line every survivor prints (pure)."""
  if lost:
    who = ", ".join(f"process {p}" + (" (the coordinator)" if p == 0 else "") for p in lost)
    who = f"{who} of {count} stopped responding"
  else:
    who = f"a process of the {count} (which one is not known) stopped responding"
  at = f"at step {step}" if step is not None else "during start-up"
  where = (f"the newest complete checkpoint is step {newest} ({workdir}/checkpoints/{newest}) "
           "and is untouched" if newest is not None else "no checkpoint was written yet")
  return (f"{who} {at} ({cause}); process {me} stops with exit status {EXIT_LOST_PEER}. "
          f"{where}. Relaunch all {count} processes with the same command to resume: "
          f"{command}")


def _short(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def probe_lost(count: int, me: int, wait_s: float = _PROBE_S) -> list[int] | None:
  """The processes that did not say "still here" within `wait_s`; None if unknown.

  Every survivor writes its key into the coordination service's key-value
  store and reads the others'. If the service cannot be reached, the
  coordinator (process 0) is taken to be the lost one (when this is not it).
  """
  result: dict = {}

  def run():
    try:
      from jax._src import distributed as jax_distributed
      client = jax_distributed.global_state.client
      client.key_value_set(f"sagan_jax/still_here/{me}", "1")
      deadline = time.time() + wait_s
      while time.time() < deadline:
        here = {int(k.rsplit("/", 1)[-1]) for k, _ in
                client.key_value_dir_get("sagan_jax/still_here/")}
        result["here"] = here
        if len(here) == count:
          break
        time.sleep(0.25)
    except Exception as e:  # noqa: BLE001 - a dead coordinator: any RPC error
      result["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(wait_s + 3.0)
  if "here" in result:
    lost = sorted(set(range(count)) - result["here"])
    if lost:
      return lost
  if count == 2:
    return [1 - me]    # of two, the lost one is the other
  return [0] if me != 0 and "error" in result else None


def exit_lost_peer(error: BaseException, *, step: int | None, workdir: str,
                   release=None) -> None:
  """Prints the one message, releases the lock (release()), ends the process; never returns."""
  import jax
  count, me = jax.process_count(), jax.process_index()
  try:
    lost = probe_lost(count, me)
    newest = newest_checkpoint(workdir)
  except Exception:  # noqa: BLE001 - the message matters more than its details
    lost, newest = None, None
  message = lost_message(lost=lost, me=me, count=count, step=step, newest=newest,
                         workdir=workdir, command=relaunch_command(), cause=_short(error))
  print(f"error: {message}", file=sys.stderr, flush=True)
  try:
    if release is not None:
      release()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOST_PEER)
