"""Small helpers the commands and the train loop share.

Output convention (every command): human progress goes to the console once
(`say`: stdout, chief process only); a mistake the user can fix is raised as
`errors.UserError` and printed once as `error: ...` on stderr with exit
status 2 (`cli_main`); details for debugging go to the absl log (shown with
`-v 0` or `--alsologtostderr`).
"""

from __future__ import annotations

import functools
import signal
import sys
from typing import Any, Callable

import jax
import numpy as np
from absl import app, logging

from sagan_jax import errors


def say(msg: str, *args, err: bool = False) -> None:
  """One line of human-readable progress (chief process only); stderr with err=True."""
  if jax.process_index() == 0:
    print(msg % args if args else msg, file=sys.stderr if err else sys.stdout, flush=True)


def cli_main(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps an absl `main`: a UserError or UsageError prints `error: ...` once, exit 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as e:
      logging.info("stopping: %s: %s", type(e).__name__, e)
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapped


def format_duration(seconds: float) -> str:
  """'1h05m' or '4m07s'."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  mnt, s = divmod(rem, 60)
  return f"{h}h{mnt:02d}m" if h else f"{mnt}m{s:02d}s"


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a.b': scalar} (non-scalars as str), e.g. for TensorBoard hparams."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_dict(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def check_finite(metrics: dict[str, float], step: int, last_ckpt: int | None,
                 workdir: str) -> None:
  """Raises NonFiniteLossError if any metric is NaN/Inf, saying where to resume from."""
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    where = (f"the last good checkpoint (step {last_ckpt}) in {workdir}/checkpoints is intact "
             "and a rerun with the same --workdir resumes from it"
             if last_ckpt is not None else "no checkpoint was written yet")
    raise errors.NonFiniteLossError(
        f"non-finite values at step {step}: {bad}. Training stopped without saving "
        f"this state; {where}. Try lower learning rates (--config.optim.d_lr / g_lr), "
        "float32 (--config.model.dtype=float32), or a different --config.seed.")


class Preemption:
  """Turns SIGTERM (TPU maintenance, scheduler kill) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    # Only a flag: printing inside a signal handler can re-enter a half-done write.
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int, poll_every: int = 10) -> bool:
    """Whether to stop after `step`. Multi-process runs agree every `poll_every` steps."""
    if jax.process_count() > 1:
      if step % poll_every:
        return False
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # noqa: BLE001 - the preemption service is not enabled
        pass
      # Agree across processes: any process's SIGTERM stops all of them.
      flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
      return bool(np.any(flags))
    return self.requested
