"""Why and when the train loop stops early: SIGTERM (`Preemption`) and non-finite
losses (`nonfinite`, `nonfinite_message`)."""

from __future__ import annotations

import signal

import numpy as np


def nonfinite(metrics: dict[str, float]) -> dict[str, float]:
  """The metrics that are NaN or Inf."""
  return {k: v for k, v in metrics.items() if not np.isfinite(v)}


def nonfinite_message(what: str, step: int, last_ckpt: int | None, workdir: str,
                      rollbacks: int | None = None) -> str:
  """Why training stopped at `step` and where a rerun resumes from.

  rollbacks: how many rollbacks (on_nan='rollback') were already spent.
  """
  where = (f"the last good checkpoint (step {last_ckpt}) in {workdir}/checkpoints is intact "
           "and a rerun with the same --workdir resumes from it"
           if last_ckpt is not None else "no checkpoint was written yet")
  spent = "" if rollbacks is None else f" after {rollbacks} rollbacks (config.max_rollbacks)"
  return (f"{what} at step {step}{spent}. Training stopped without saving this state; "
          f"{where}. Try lower learning rates (--config.optim.d_lr / g_lr), float32 "
          "(--config.model.dtype=float32), a different --config.seed" +
          (" or --config.on_nan=rollback." if rollbacks is None else "."))


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
    import jax
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
