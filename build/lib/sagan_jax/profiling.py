"""`config.profile_steps = (start, stop)`: a jax.profiler trace of those train steps.

The trace of steps start .. stop-1 (absolute step numbers, as in the log)
goes to WORKDIR/profile/plugins/profile/<run>/, one file per host; open it
with TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`,
`tensorboard --logdir WORKDIR/profile`) or Perfetto (ui.perfetto.dev, the
`.trace.json.gz` file). Each step is a `StepTraceAnnotation`, so the plugin's
step-time view splits the trace per iteration. Skip the first steps: step
`start` should come after compilation (the first step of a run or resume
compiles), e.g. (10, 15).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

from sagan_jax import utils


class StepProfiler:
  """Starts the trace before step `start` runs and stops it once step `stop - 1` has finished."""

  def __init__(self, profile_steps, workdir: str):
    steps = tuple(profile_steps or ())
    self.start, self.stop = steps if steps else (-1, -1)
    self.dir = os.path.join(workdir, "profile")
    self.active = False

  def call(self, step: int, fn: Callable, *args) -> Any:
    """fn(*args) as train step number `step` (0-based), traced if inside [start, stop)."""
    if step == self.start:
      jax.profiler.start_trace(self.dir)
      self.active = True
    if not self.active:
      return fn(*args)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      out = fn(*args)
    if step + 1 >= self.stop:
      jax.block_until_ready(out)  # the trace must contain the step's device work
      self.close()
      utils.say("wrote a profile of steps %d-%d to %s", self.start, step, self.dir)
    return out

  def close(self) -> None:
    """Stops a running trace (e.g. when the loop ends early)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
