"""The training loop around the train step (`train.train_and_evaluate` runs it).

One `Loop` per run: it takes the workdir's lock (`runlock`), restores or
creates the state, then steps, logs, saves sample grids, evaluates and
checkpoints on their schedules. Every `log_every` steps (and before every
save) it checks that the numbers are finite (`on_nan`) and watches for
collapse (`collapse`, `on_collapse`); either can roll back to an earlier
checkpoint with new noise, at most `max_rollbacks` times in the run. SIGTERM
saves and stops; a lost process of a multi-process job ends every survivor
with one message (`peers`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from sagan_jax import (checkpointing, collapse, errors, experiments, images, integrity,
                       parallel, peers, preflight, profiling, runlock, sampling, stopping,
                       utils)
from sagan_jax.state import abstract_state, create_state

# Folded into the noise key after a rollback (a number no step reaches).
_ROLLBACK_SALT = 2**31 - 1


def step_rng(config, mesh, rollbacks: int = 0) -> jax.Array:
  """The base key of every step's noise, replicated on the mesh.

  PRNGKey(config.seed); after the k-th rollback (on_nan / on_collapse =
  'rollback') that key with (salt, k) folded in, so the rolled-back run draws
  new noise, and a run resumed from a checkpoint saved after k rollbacks draws
  the same.
  """
  key = jax.random.PRNGKey(config.seed)
  if rollbacks:
    key = jax.random.fold_in(jax.random.fold_in(key, _ROLLBACK_SALT), rollbacks)
  return jax.device_put(np.asarray(key), parallel.replicated(mesh))


def check_source(source, m) -> None:
  if source.resolution != m.resolution:
    raise errors.DataError(f"data source {source.name!r} yields {source.resolution}px images but "
                    f"config.model.resolution={m.resolution}.")
  if m.num_classes and source.num_classes != m.num_classes:
    raise errors.DataError(f"data source {source.name!r} has {source.num_classes} classes but "
                    f"config.model.num_classes={m.num_classes}; set "
                    f"--config.model.num_classes={source.num_classes} (or 0 for "
                    "unconditional).")


def nonfinite_problem(scalars: dict[str, float], state, check_state: bool) -> str:
  """'' if the metrics (and, with check_state, the whole state) may be logged or saved;
  otherwise what is NaN/Inf."""
  bad = stopping.nonfinite(scalars)
  if bad:
    return f"non-finite values {bad}"
  if check_state and not checkpointing.all_finite(state):
    return "non-finite parameters or optimizer state"
  return ""


class Clock:
  """Throughput and ETA: steps per second since the last mark (the first step's compile
  excluded), time since the start."""

  def __init__(self, step: int):
    self.start = time.time()
    self.mark(step)

  def mark(self, step: int) -> None:
    self.t, self.step = time.time(), step

  def rate(self, step: int) -> float:
    return (step - self.step) / max(time.time() - self.t, 1e-9)

  def line(self, step: int, end: int, scalars: dict, batch: int) -> tuple[str, float]:
    """The console line of a log step and its steps/s; marks the clock."""
    sps = self.rate(step)
    ada = (f" | ADA p {scalars['ada_p']:.3f} r_t {scalars['ada_rt']:.2f}"
           if "ada_p" in scalars else "")
    # No step timed yet (the run's first step, which compiles): no speed, no ETA.
    speed = (f"{sps:.2f} steps/s {sps * batch:.1f} img/s" if sps > 0
             else "first step (compiling)")
    eta = utils.format_duration((end - step) / sps) if sps > 0 else "--"
    text = ("step %d/%d | d_loss %.4f g_loss %.4f | D(x) %.3f D(G(z)) %.3f%s | "
            "%s | elapsed %s ETA %s") % (
                step, end, scalars["d_loss"], scalars["g_loss"], scalars["d_real"],
                scalars["d_fake"], ada, speed, utils.format_duration(time.time() - self.start),
                eta)
    self.mark(step)
    return text, sps


@dataclasses.dataclass
class Position:
  """Where the run is: what a rollback replaces."""
  state: Any
  step: int
  rollbacks: int
  rng: jax.Array
  source: Any
  last_ckpt: int | None


class Loop:
  """One run of train_and_evaluate (after the lock is taken)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh,
               make_step: Callable, make_writer: Callable):
    from sagan_jax import best_checkpoint
    from sagan_jax.evaluation import training_evals
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.is_chief = jax.process_index() == 0
    self.ckpt = checkpointing.Checkpointer(workdir, config)   # writes nothing before a save
    # The data first: a missing dataset fails before the model is built or compiled.
    planned = self.ckpt.latest_step() or 0
    source = self.make_source(planned)
    self.models, self.abstract = abstract_state(config, mesh)
    restored = self.ckpt.restore(self.abstract)
    self.start = restored.step if restored else 0
    if self.start != planned:   # fell back past a damaged checkpoint
      source = self.make_source(self.start)
    rollbacks = restored.rollbacks if restored else 0
    state = restored.state if restored else create_state(self.models, config, mesh)
    if not restored and config.init_from:   # a fine-tuning run's first start
      from sagan_jax import finetune
      state = finetune.init_from(config, state, mesh)
    utils.release_freed_memory()   # what the init or restore freed, before the step's peak
    # The first transfer of the state's key after the lock's: while the processes are in
    # step (CPU collectives give up after 30 s), before the chief's TensorBoard writer.
    self.pos = Position(state, self.start, rollbacks, step_rng(config, mesh, rollbacks),
                        source, self.start if restored else None)
    self.writer = make_writer(self.is_chief)
    if self.start == 0:
      self.writer.write_hparams(utils.flatten_dict(config.to_dict()))
    self.step_fn = make_step(self.models, config, mesh)
    self.grid_z, self.grid_y, self.grid_cols = sampling.grid_inputs(config)
    self.evals = training_evals.make_all(config, self.models, mesh)   # the first picks the best
    first = self.evals[0] if self.evals else None
    self.best = (best_checkpoint.BestCheckpointer(workdir, config, first.primary, first.mode)
                 if first else None)
    self.watch = collapse.Watch(config, first.mode if first else "max")

  def make_source(self, step: int):
    from sagan_jax import data as data_lib
    source = data_lib.make_source(self.config, process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  start_batch=step * self.config.optim.n_critic)
    check_source(source, self.config.model)
    return source

  def next_batch(self):
    parts = [next(self.pos.source) for _ in range(self.config.optim.n_critic)]
    local = {k: np.stack([p[k] for p in parts]) for k in ("image", "label")}
    return parallel.global_batch(local, self.mesh, leading_axes=1)

  def write_samples(self, step: int) -> None:
    imgs = sampling.generate_from_state(self.config, self.models, self.pos.state, self.grid_y,
                                        z=self.grid_z, batch_size=len(self.grid_y))
    grid = images.make_grid(imgs, self.grid_cols)
    if self.is_chief:
      images.save_png(f"{self.workdir}/samples/step_{step:07d}.png", grid,
                      scale=images.display_scale(self.config.model.resolution))
    self.writer.write_images(step, {"samples_ema": grid[None]})

  def evaluate(self, step: int, ev) -> str:
    """Runs one evaluator; the first one keeps the best checkpoint and is watched for
    collapse. A collapse reason or ''."""
    results = ev.run(self.pos.state)
    self.writer.write_scalars(step, {f"{ev.tag}/{k}": v for k, v in results.items()})
    if self.is_chief:  # WORKDIR/eval.jsonl: what the sweep runner's tables are made from
      first = ev is self.evals[0]
      experiments.record_eval(self.workdir, step,
                              {k if first else f"{ev.tag}/{k}": v for k, v in results.items()})
    utils.say("eval at step %d (%d EMA samples, %s): %s", step, ev.num_samples, ev.name,
              ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    if ev is not self.evals[0] or ev.primary not in results:
      return ""
    self.best.save(step, self.pos.state, results[ev.primary])
    return self.watch.evaluation(results[ev.primary], f"{ev.name} {ev.primary}")

  def rollback(self, what: str, kind: str) -> Position:
    """on_nan (kind 'nan') / on_collapse (kind 'collapse'): the position to go on from,
    or an error that stops the run."""
    c, p = self.config, self.pos
    policy = c.on_nan if kind == "nan" else c.on_collapse
    if policy == "stop" or p.rollbacks >= c.max_rollbacks:
      spent = p.rollbacks if policy == "rollback" else None
      if kind == "nan":
        raise errors.NonFiniteLossError(stopping.nonfinite_message(
            what, p.step, p.last_ckpt, self.workdir, spent))
      raise errors.CollapseError(collapse_message(what, p.step, p.last_ckpt, self.workdir,
                                                  spent, self.best_step(),
                                                  collapse.ADVICE.get(self.watch.signal, "")))
    self.ckpt.finish()
    best = self.best_step() if kind == "collapse" else None
    back = self.ckpt.restore(self.abstract, at_most=best)
    if back is None and best is not None:
      back = self.ckpt.restore(self.abstract)
    if back is None:
      error = errors.NonFiniteLossError if kind == "nan" else errors.CollapseError
      raise error(f"{what} at step {p.step}, before the first checkpoint: nothing to roll "
                  "back to. Rerun with another --config.seed or lower learning rates.")
    if kind == "collapse":
      self.set_aside_after(back.step)
    rollbacks = p.rollbacks + 1
    utils.say("rollback %d of at most %d: %s at step %d; back to step %d with new noise",
              rollbacks, c.max_rollbacks, what, p.step, back.step)
    self.watch.reset()
    return Position(back.state, back.step, rollbacks, step_rng(c, self.mesh, rollbacks),
                    self.make_source(back.step), back.step)

  def best_step(self) -> int | None:
    return self.best.best_step if self.best is not None else None

  def set_aside_after(self, step: int) -> None:
    """Renames the checkpoints newer than `step` `N.rolled_back` (kept, never restored)."""
    cdir = checkpointing.checkpoint_dir(self.workdir)
    if self.is_chief:
      for s in integrity.list_dir(cdir).steps:
        if s > step:
          (cdir / str(s)).rename(cdir / f"{s}{ROLLED_BACK_MARK}")
          utils.say("moved checkpoint step %d to %s (after the rollback point)", s,
                    cdir / f"{s}{ROLLED_BACK_MARK}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"sagan_set_aside_{step}")

  def on_collapse(self, reason: str) -> bool:
    """Acts on a collapse reason; True if the run rolled back (the step is not kept)."""
    if not reason:
      return False
    if self.config.on_collapse == "warn":
      utils.say("warning: training may have collapsed at step %d: %s. Look at the samples; "
                "--config.on_collapse=rollback goes back to the best checkpoint with new noise.",
                self.pos.step, reason, err=True)
      return False
    self.pos = self.rollback(f"collapse ({reason})", "collapse")
    return True

  def run(self, end: int, lock: runlock.RunLock) -> Any:
    c = self.config
    if self.start >= c.total_steps:
      utils.say("%s is already trained to step %d (config.total_steps=%d): nothing to do. To "
                "train on, rerun the same command with a larger --config.total_steps (e.g. "
                "--config.total_steps=%d).", self.workdir, self.start, c.total_steps,
                2 * self.start)
    else:
      utils.say("Training %s: steps %d -> %d, global batch %d on %d devices (%d processes).",
                self.workdir, self.start, end, c.batch_size, self.mesh.devices.size,
                jax.process_count())
    clock = Clock(self.start)
    profiler = profiling.StepProfiler(c.profile_steps, self.workdir)
    failed = False
    try:
      with stopping.Preemption() as preempt:
        while self.pos.step < end:
          if self.one_step(end, clock, profiler, preempt):
            break
    except BaseException as e:
      if peers.is_lost_peer(e, jax.process_count()):
        peers.exit_lost_peer(e, step=self.pos.step, workdir=self.workdir, release=lock.release)
      failed = True
      self.ckpt.finish(raise_errors=False)  # a started save completes; the first error is reported
      raise
    else:
      self.ckpt.finish()
    finally:
      # Orbax's background threads stop here, while their event loops still run: left to
      # interpreter exit, a failed save's could print a traceback after the error message.
      best_wait = (lambda: self.best.wait(raise_errors=not failed)) if self.best else None
      shut_down([profiler.close, self.ckpt.close, best_wait, self.writer.close], quiet=failed)
    return self.pos.state

  def one_step(self, end: int, clock: Clock, profiler, preempt) -> bool:
    """One iteration and whatever is due after it; True to stop (SIGTERM)."""
    c, p = self.config, self.pos
    p.state, metrics = profiler.call(p.step, self.step_fn, p.state, self.next_batch(), p.rng)
    p.step += 1
    step = p.step
    self.ckpt.poll()  # a save that failed in the background stops the run now
    if step == self.start + 1:  # throughput and ETA exclude the first step's compilation
      jax.block_until_ready(metrics)
      utils.release_freed_memory()   # the compiler's memory
      clock.mark(step)
    log_now = step % c.log_every == 0 or step == end
    ckpt_now = step % c.checkpoint_every == 0 or step == end
    stop_now = preempt.should_stop(step)
    if log_now or ckpt_now or stop_now:
      # Never log or save a state whose losses, parameters or optimiser state went NaN/Inf.
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      what = nonfinite_problem(scalars, p.state, ckpt_now or stop_now)
      if what:
        self.pos = self.rollback(what, "nan")
        clock.mark(self.pos.step)
        return False
    if log_now:
      text, sps = clock.line(step, end, scalars, c.batch_size)
      scalars.update({"steps_per_sec": sps, "images_per_sec": sps * c.batch_size})
      self.writer.write_scalars(step, scalars)
      utils.say("%s", text)
      if self.on_collapse(self.watch.log(scalars)):
        clock.mark(self.pos.step)
        return False
    if ckpt_now or stop_now:
      self.ckpt.save(step, p.state, p.rollbacks)
      p.last_ckpt = step
    if (c.sample_every and step % c.sample_every == 0) or step == end:
      self.write_samples(step)
    for ev in self.evals:
      if ev.due(step, end) and self.on_collapse(self.evaluate(step, ev)):
        clock.mark(self.pos.step)
        return False
    if stop_now:
      utils.say("Stopped at step %d on request (SIGTERM); rerun with the same --workdir "
                "to resume.", step)
      return True
    return False


ROLLED_BACK_MARK = ".rolled_back"


def shut_down(closers: list, quiet: bool) -> None:
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


def collapse_message(what: str, step: int, last_ckpt: int | None, workdir: str,
                     rollbacks: int | None, best: int | None, advice: str = "") -> str:
  """Why training stopped for collapse, and how to go on (`advice`: collapse.ADVICE's)."""
  spent = "" if rollbacks is None else f" after {rollbacks} rollbacks (config.max_rollbacks)"
  where = (f"the last checkpoint is step {last_ckpt} in {workdir}/checkpoints"
           if last_ckpt is not None else "no checkpoint was written yet")
  best_txt = f"; the best evaluation was at step {best}" if best is not None else ""
  tip = ("" if rollbacks is not None else ", or rerun with --config.on_collapse=rollback "
         "(back to the best checkpoint with new noise)")
  advice = advice or "lower the learning rates (--config.optim.g_lr, --config.optim.d_lr)"
  return (f"training stopped: {what} at step {step}{spent}; {where}{best_txt}. "
          f"{advice[0].upper()}{advice[1:]}; or try another --config.seed{tip}.")


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh=None,
        stop_after: int | None = None, make_step: Callable) -> Any:
  """Validates, takes the workdir's lock, trains until config.total_steps (or stop_after)."""
  workdir = preflight.preflight(config, workdir)   # nothing read, compiled or written yet
  from sagan_jax import finetune   # (after jax.distributed: it may print through JAX)
  finetune.check_source(config, workdir)
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  from sagan_jax import summaries
  make_writer = summaries.writer_factory(workdir)  # (its imports: every process, in step)
  lock = runlock.acquire_for_job(workdir)   # refuses a second job before anything is written
  try:
    try:
      loop = Loop(config, workdir, mesh, make_step, make_writer)
    except Exception as e:
      if peers.is_lost_peer(e, jax.process_count()):
        peers.exit_lost_peer(e, step=None, workdir=workdir, release=lock.release)
      raise
    end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
    return loop.run(end, lock)
  finally:
    lock.release()
