"""Training: the jitted train step and `train_and_evaluate`.

One iteration = `n_critic` discriminator updates (each on concat(real, fake)
so D's SN vectors advance once per D update) followed by one generator
update, with separate Adam optimisers (TTUR: G 1e-4, D 4e-4) and an EMA of
G. `train_step(state, batch, rng)` is a pure function, composed of named
phases in `sagan_jax.step`; `make_train_step` jits it once over a
data-parallel mesh, and `train_and_evaluate` runs the loop of
`sagan_jax.loop` around it: logging, sample grids, evaluation, Orbax
checkpoints, resume, preemption, rollbacks. The state and the models it is
built from live in `sagan_jax.state`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import ml_collections

from sagan_jax import loop, parallel, xla_flags
from sagan_jax.state import Models, TrainState
from sagan_jax.step import train_step

__all__ = ["make_train_step", "step_rng", "train_and_evaluate", "train_step"]


def make_train_step(models: Models, config, mesh) -> Callable:
  """jit(train_step) with the state replicated and the batch sharded on 'data'
  (float32 on CPU: with xla_flags.compiler_options, YNNPACK's reduce fusion on)."""
  rep = parallel.replicated(mesh)
  step = functools.partial(train_step, models=models, config=config,
                           z_sharding=parallel.batch_sharding(mesh))
  options = xla_flags.compiler_options(config.model.dtype, mesh.devices.flat[0].platform)
  return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,), compiler_options=options)


# The noise key of every step (moved with the loop; kept here for callers of train.step_rng).
step_rng = loop.step_rng


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, stop_after: int | None = None) -> TrainState:
  """Trains (or resumes) in `workdir` until config.total_steps.

  stop_after: stop (with a checkpoint) once this step is reached, as if
  preempted; used by tests of resumption. The loop itself is `sagan_jax.loop`.
  """
  return loop.run(config, workdir, mesh=mesh, stop_after=stop_after,
                  make_step=lambda *args: make_train_step(*args))   # (looked up at each run)
