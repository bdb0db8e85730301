"""Training: the loop around the pure train step.

One iteration = `n_critic` discriminator updates (each on concat(real, fake)
so D's SN vectors advance once per D update) followed by one generator
update, with separate Adam optimisers (TTUR: G 1e-4, D 4e-4) and an EMA of
G. `train_step(state, batch, rng)` is a pure function, composed of named
phases in `sagan_jax.step`; `train_and_evaluate` jits it once over a
data-parallel mesh and runs the loop: logging, sample grids, evaluation,
Orbax checkpoints, resume and preemption. The state and the models it is
built from live in `sagan_jax.state`.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from sagan_jax import (checkpointing, config_base, errors, images, integrity, parallel, profiling,
                       sampling, utils)
from sagan_jax.state import Models, TrainState, abstract_state, create_state
from sagan_jax.step import train_step


def make_train_step(models: Models, config, mesh) -> Callable:
  """jit(train_step) with the state replicated and the batch sharded on 'data'."""
  rep = parallel.replicated(mesh)
  step = functools.partial(train_step, models=models, config=config,
                           z_sharding=parallel.batch_sharding(mesh))
  return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


# Folded into the noise key after a rollback (a number no step reaches).
_ROLLBACK_SALT = 2**31 - 1


def step_rng(config, mesh, rollbacks: int = 0) -> jax.Array:
  """The base key of every step's noise, replicated on the mesh.

  PRNGKey(config.seed); after the k-th rollback (on_nan='rollback') that key
  with (salt, k) folded in, so the rolled-back run draws new noise, and a run
  resumed from a checkpoint saved after k rollbacks draws the same.
  """
  key = jax.random.PRNGKey(config.seed)
  if rollbacks:
    key = jax.random.fold_in(jax.random.fold_in(key, _ROLLBACK_SALT), rollbacks)
  return jax.device_put(np.asarray(key), parallel.replicated(mesh))


def _check_source(source, m) -> None:
  if source.resolution != m.resolution:
    raise errors.DataError(f"data source {source.name!r} yields {source.resolution}px images but "
                    f"config.model.resolution={m.resolution}.")
  if m.num_classes and source.num_classes != m.num_classes:
    raise errors.DataError(f"data source {source.name!r} has {source.num_classes} classes but "
                    f"config.model.num_classes={m.num_classes}; set "
                    f"--config.model.num_classes={source.num_classes} (or 0 for "
                    "unconditional).")


def _log_line(step: int, end: int, scalars: dict, sps: float, batch: int, elapsed: float):
  ada = f" | ADA p {scalars['ada_p']:.3f} r_t {scalars['ada_rt']:.2f}" if "ada_p" in scalars else ""
  utils.say("step %d/%d | d_loss %.4f g_loss %.4f | D(x) %.3f D(G(z)) %.3f%s | "
            "%.2f steps/s %.1f img/s | elapsed %s ETA %s", step, end, scalars["d_loss"],
            scalars["g_loss"], scalars["d_real"], scalars["d_fake"], ada, sps, sps * batch,
            utils.format_duration(elapsed), utils.format_duration((end - step) / max(sps, 1e-9)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, stop_after: int | None = None) -> TrainState:
  """Trains (or resumes) in `workdir` until config.total_steps.

  stop_after: stop (with a checkpoint) once this step is reached, as if
  preempted; used by tests of resumption.
  """
  # Every check that needs no data, compile or write comes first.
  workdir = integrity.resolve_workdir(workdir)
  config_base.validate(config)
  integrity.check_workdir(workdir)
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  from sagan_jax import tf_setup
  tf_setup.import_tf()   # TensorFlow (clu's writers, the data) quietly, every process, in step
  from clu import metric_writers

  from sagan_jax import data as data_lib
  from sagan_jax.evaluation import evaluators

  is_chief = jax.process_index() == 0
  n_critic = config.optim.n_critic
  ckpt = checkpointing.Checkpointer(workdir, config)   # writes nothing before its first save

  def make_source(step: int):
    source = data_lib.make_source(config, process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  start_batch=step * n_critic)
    _check_source(source, config.model)
    return source

  # The data first: a missing dataset fails before the model is built or compiled.
  planned = ckpt.latest_step() or 0
  source = make_source(planned)
  models, abstract = abstract_state(config, mesh)
  restored = ckpt.restore(abstract)
  start = restored.step if restored else 0
  if start != planned:   # fell back past a damaged checkpoint
    source = make_source(start)
  state = restored.state if restored else create_state(models, config, mesh)
  if not restored and config.init_from:   # a fine-tuning run's first start
    from sagan_jax import finetune
    state = finetune.init_from(config, state, mesh)
  rollbacks = restored.rollbacks if restored else 0
  # The first cross-process transfer (it sets up the CPU collectives, which give up after
  # 30 s): here, while the processes are in step, not after the chief's writer set-up.
  rng = step_rng(config, mesh, rollbacks)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief,
                                                asynchronous=False)
  if start == 0:
    writer.write_hparams(utils.flatten_dict(config.to_dict()))
  step_fn = make_train_step(models, config, mesh)
  grid_z, grid_y, grid_cols = sampling.grid_inputs(config)
  scale = max(1, 128 // config.model.resolution)

  def write_samples(step: int):
    imgs = sampling.generate_from_state(config, models, state, grid_y, z=grid_z,
                                        batch_size=len(grid_y))
    grid = images.make_grid(imgs, grid_cols)
    if is_chief:
      images.save_png(f"{workdir}/samples/step_{step:07d}.png", grid, scale=scale)
    writer.write_images(step, {"samples_ema": grid[None]})

  evaluator = evaluators.make(config, models, mesh)
  best = (checkpointing.BestCheckpointer(workdir, config, evaluator.mode)
          if evaluator else None)

  def evaluate(step: int):
    results = evaluator.run(state)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    utils.say("eval at step %d (%d EMA samples, %s): %s", step, evaluator.num_samples,
              evaluator.name, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    best.save(step, state, results[evaluator.primary])

  def next_batch():
    parts = [next(source) for _ in range(n_critic)]
    local = {k: np.stack([p[k] for p in parts]) for k in ("image", "label")}
    return parallel.global_batch(local, mesh, leading_axes=1)

  def recover(what: str):
    """on_nan: stop with a message, or go back to the newest intact checkpoint."""
    nonlocal state, step, rollbacks, rng, source, last_ckpt
    if config.on_nan == "stop" or rollbacks >= config.max_rollbacks:
      raise errors.NonFiniteLossError(utils.nonfinite_message(
          what, step, last_ckpt, workdir, rollbacks if config.on_nan == "rollback" else None))
    ckpt.finish()
    back = ckpt.restore(abstract)
    if back is None:
      raise errors.NonFiniteLossError(
          f"{what} at step {step}, before the first checkpoint: nothing to roll back to. "
          "Rerun with another --config.seed or lower learning rates.")
    rollbacks += 1
    utils.say("rollback %d of at most %d: %s at step %d; back to step %d with new noise",
              rollbacks, config.max_rollbacks, what, step, back.step)
    state, step, last_ckpt = back.state, back.step, back.step
    rng, source = step_rng(config, mesh, rollbacks), make_source(back.step)

  end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
  if start >= config.total_steps:
    utils.say("%s is already trained to step %d (config.total_steps=%d): nothing to do. To "
              "train on, rerun the same command with a larger --config.total_steps (e.g. "
              "--config.total_steps=%d).", workdir, start, config.total_steps, 2 * start)
  else:
    utils.say("Training %s: steps %d -> %d, global batch %d on %d devices (%d processes).",
              workdir, start, end, config.batch_size, mesh.devices.size, jax.process_count())
  last_ckpt = start if restored else None
  t_log, step_log = time.time(), start
  t_start = time.time()
  step = start
  profiler = profiling.StepProfiler(config.profile_steps, workdir)
  failed = False
  try:
    with utils.Preemption() as preempt:
      while step < end:
        state, metrics = profiler.call(step, step_fn, state, next_batch(), rng)
        step += 1
        ckpt.poll()  # a save that failed in the background stops the run now
        if step == start + 1:  # throughput and ETA exclude the first step's compilation
          jax.block_until_ready(metrics)
          t_log, step_log = time.time(), step
        log_now = step % config.log_every == 0 or step == end
        ckpt_now = step % config.checkpoint_every == 0 or step == end
        stop_now = preempt.should_stop(step)
        if log_now or ckpt_now or stop_now:
          # Never log or save a state whose losses, parameters or optimiser state went NaN/Inf.
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          bad = utils.nonfinite(scalars)
          what = f"non-finite values {bad}" if bad else ""
          if not bad and (ckpt_now or stop_now) and not checkpointing.all_finite(state):
            what = "non-finite parameters or optimizer state"
          if what:
            recover(what)
            t_log, step_log = time.time(), step
            continue
        if log_now:
          now = time.time()
          sps = (step - step_log) / max(now - t_log, 1e-9)
          scalars.update({"steps_per_sec": sps, "images_per_sec": sps * config.batch_size})
          writer.write_scalars(step, scalars)
          _log_line(step, end, scalars, sps, config.batch_size, now - t_start)
          t_log, step_log = now, step
        if ckpt_now or stop_now:
          ckpt.save(step, state, rollbacks)
          last_ckpt = step
        if (config.sample_every and step % config.sample_every == 0) or step == end:
          write_samples(step)
        if evaluator and evaluator.due(step, end):
          evaluate(step)
        if stop_now:
          utils.say("Stopped at step %d on request (SIGTERM); rerun with the same --workdir "
                    "to resume.", step)
          break
  except BaseException:
    failed = True
    ckpt.finish(raise_errors=False)  # a started save completes; the first error is reported
    raise
  else:
    ckpt.finish()
  finally:
    # Orbax's background threads stop here, while their event loops still run: left to
    # interpreter exit, a failed save's could print a traceback after the error message.
    _shut_down([profiler.close, ckpt.close, best.wait if best else None, writer.close],
               quiet=failed)
  return state


def _shut_down(closers: list, quiet: bool) -> None:
  """Calls each closer. After a failure (quiet) their errors are logged, never raised, so the
  error that stopped the run stays the one message; otherwise the first is raised at the end."""
  first = None
  for close in filter(None, closers):
    try:
      close()
    except Exception as e:  # noqa: BLE001 - reported below or logged
      logging.info("while shutting down (%s): %s", getattr(close, "__qualname__", close), e,
                   exc_info=e)
      first = first or e
  if first is not None and not quiet:
    raise first
