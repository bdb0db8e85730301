"""The best-evaluated checkpoint of a run: WORKDIR/checkpoints_best/<step>/.

Written by the train loop after each evaluation of the first configured
evaluator that beats the best value so far (`training_evals`), through the
same `checkpointing.Checkpointer` as the regular checkpoints: a manifest,
verified before every restore, one kept. `checkpointing.load(workdir,
best=True)`, `sagan_jax.load(workdir, best=True)` and `evaluate --best` read it.
"""

from __future__ import annotations

import math

import ml_collections

from sagan_jax import checkpointing, integrity


class BestCheckpointer:
  """Keeps the checkpoint with the best evaluation value in WORKDIR/checkpoints_best.

  An ordinary verified checkpoint (manifest, keep 1, the same restore path):
  its `meta` holds {'metric', 'value'}. A resumed run starts from the value
  stored there when the metric is the same.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, metric: str, mode: str):
    self.metric, self.mode = metric, mode
    self._ckpt = checkpointing.Checkpointer(workdir, config, best=True, keep=1)
    self.best_step, self.best_value = None, None
    listing = integrity.list_dir(self._ckpt.dir)
    if listing.steps:
      step_dir = self._ckpt.dir / str(listing.steps[-1])
      meta = checkpointing.read_meta(step_dir)
      if meta.get("metric") == metric and isinstance(meta.get("value"), (int, float)):
        self.best_step, self.best_value = listing.steps[-1], float(meta["value"])

  def better(self, value: float) -> bool:
    if self.best_value is None:
      return True
    return value > self.best_value if self.mode == "max" else value < self.best_value

  def save(self, step: int, state, value: float) -> bool:
    """Saves `state` if `value` beats the best so far; returns whether it did."""
    value = float(value)
    if not math.isfinite(value) or not self.better(value):
      return False
    self._ckpt.save(step, state, meta={"metric": self.metric, "value": value})
    self.best_step, self.best_value = step, value
    return True

  def poll(self) -> None:
    self._ckpt.poll()

  def wait(self, raise_errors: bool = True) -> None:
    """Finishes the save in flight (verified, older best removed) and stops the saver."""
    try:
      self._ckpt.finish(raise_errors)
    finally:
      self._ckpt.close()
