"""Orbax checkpoints of the whole train state, the config that made it and the run's metadata.

Layout: WORKDIR/checkpoints/<step>/{state, config, meta, sagan_manifest.json}, and
the best-evaluated one (`best_checkpoint.BestCheckpointer`) the same way in
WORKDIR/checkpoints_best/<step>/, its `meta` naming the metric and value;
`load(workdir, best=True)` reads it.

Whenever the process dies (kill -9, a full disk):
- A step directory appears only complete: Orbax writes into a temporary
  directory and renames it last; the manifest (size and SHA-256 of every
  file, see `integrity`) is written just before that rename.
- Every restore first checks the files against the manifest. A damaged
  newest checkpoint (truncated, missing or overwritten file, NaN/Inf in it)
  is reported with its step and what is wrong, and the previous intact one
  is used; with none intact the run stops with one message.
- Old checkpoints are deleted only by the keep-N policy (`keep_checkpoints`),
  and only once the newer checkpoint is complete and verified.
- A failed save (disk full, read-only) stops the run with a message; the
  checkpoints already written are untouched.
Every process takes part in a save (multi-host); a restore places the arrays
on the current mesh, whatever mesh wrote them.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sagan_jax import config_base, integrity, utils
from sagan_jax.errors import CheckpointError

BEST_DIR = "checkpoints_best"


def checkpoint_dir(workdir: str, best: bool = False) -> epath.Path:
  """WORKDIR/checkpoints (or checkpoints_best), absolute (Orbax refuses relative paths; gs://
  stays as it is)."""
  return epath.Path(integrity.resolve_workdir(workdir)) / (BEST_DIR if best else "checkpoints")


@jax.jit
def _finite(tree) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def all_finite(tree) -> bool:
  """Whether every float in `tree` is finite (one on-device reduction, one host sync)."""
  return bool(_finite(tree))


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: its step, the state, its config and the run's rollback count."""
  step: int
  state: Any
  config: ml_collections.ConfigDict
  rollbacks: int = 0


class _Damaged(Exception):
  """A checkpoint that cannot be used; the message says what is wrong with it."""


def _read_json(step_dir: epath.Path, item: str) -> dict:
  path = step_dir / item / "metadata"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise _Damaged(f"its {item} ({path}) is unreadable ({type(e).__name__})") from e


def read_meta(step_dir: epath.Path) -> dict:
  """A step's `meta` item ({'step', 'rollbacks', ...}); {} when it is missing or unreadable."""
  try:
    return _read_json(step_dir, "meta")
  except _Damaged:
    return {}


def _restore_arrays(step_dir: epath.Path, template):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(step_dir, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
  except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types for bad files
    raise _Damaged(f"Orbax could not read it ({type(e).__name__}: {str(e)[:200]})") from e
  return restored["state"]


def _verified_config(step_dir: epath.Path) -> tuple[ml_collections.ConfigDict, bool]:
  """(saved config, whether the files went unverified) of a step whose files check out."""
  verdict = integrity.check(step_dir)
  if not verdict.ok:
    raise _Damaged(verdict.problem)
  return config_base.merge_onto_defaults(_read_json(step_dir, "config")), verdict.unverified


def _load_step(step_dir: epath.Path, template_fn: Callable, config) -> Restored:
  """One step directory, checked and restored; _Damaged if unusable."""
  saved, unverified = _verified_config(step_dir)
  if config is not None:
    _check_compatible(saved, config, str(step_dir.parent.parent))
  try:
    state = _restore_arrays(step_dir, template_fn(saved))
  except _Damaged as e:
    if unverified:
      raise
    # Its files match the manifest byte for byte: the checkpoint is whole, so this is not
    # damage to skip past (an older one would fail the same way), but a reader problem.
    raise CheckpointError(f"checkpoint {step_dir} is intact (every file matches its "
                          f"{integrity.MANIFEST}) but could not be restored: {e}.") from None
  if not all_finite(state):
    raise _Damaged("it holds NaN/Inf values")
  meta = _read_json(step_dir, "meta") if (step_dir / "meta").exists() else {}
  if unverified:
    utils.say("warning: checkpoint %s has no %s (written by an older sagan_jax): restored "
              "without checking its files", step_dir, integrity.MANIFEST, err=True)
  return Restored(int(step_dir.name), state, saved, int(meta.get("rollbacks", 0)))


def _no_checkpoint_message(workdir: str, best: bool = False) -> str:
  cdir = checkpoint_dir(workdir, best)
  if not epath.Path(workdir).exists():
    return f"--workdir {workdir} does not exist; give the directory of a training run."
  if best:
    return (f"no best checkpoint in {cdir}: it is written by runs with an in-training "
            "evaluation (config.eval_every or config.evals); leave out --best for the latest.")
  return (f"no checkpoints in {cdir}: train first with "
          f"`python -m sagan_jax.main --config ... --workdir {workdir}`.")


def find(workdir: str, template_fn: Callable, *, step: int | None = None,
         config: ml_collections.ConfigDict | None = None,
         at_most: int | None = None, best: bool = False) -> Restored | None:
  """The newest intact checkpoint of `workdir` (or exactly `step`), restored; None if none.

  template_fn(saved_config) -> the abstract state to restore into (shapes and
  shardings). config: the running config, whose architecture must match.
  best: from checkpoints_best instead of checkpoints. A damaged checkpoint is
  reported and skipped (not with `step`: then it is an error); a different
  architecture is an error. at_most: only steps <= it.
  """
  cdir = checkpoint_dir(workdir, best)
  listing = integrity.list_dir(cdir)
  for name in listing.unfinished:
    utils.say("warning: ignoring %s: an interrupted save, never restored (delete it to free "
              "the space)", cdir / name, err=True)
  steps = tuple(s for s in listing.steps if at_most is None or s <= at_most)
  return _first_usable(cdir, _candidates(cdir, steps, step), step is not None,
                       lambda s: _load_step(cdir / str(s), template_fn, config))


def _candidates(cdir: epath.Path, steps: tuple[int, ...], step: int | None) -> list[int]:
  """The steps to try, newest first: all of them, or exactly `step` (which must exist)."""
  if step is None:
    return list(reversed(steps))
  if step not in steps:
    raise CheckpointError(f"--step {step}: no checkpoint of that step in {cdir} "
                          f"(available: {list(steps) or 'none'}).")
  return [step]


def _first_usable(cdir: epath.Path, steps: list[int], exact: bool, use: Callable):
  """use(step) for the first step that is not damaged, warning about each skipped one.

  None if there are no steps; CheckpointError if all are damaged (or the one
  asked for with `exact`).
  """
  problems = []
  for s in steps:
    try:
      return use(s)
    except _Damaged as e:
      problems.append(f"step {s}: {e}")
      if exact:
        raise CheckpointError(f"checkpoint step {s} in {cdir} is damaged: {e}. Choose another "
                              f"--step (available: {integrity.list_dir(cdir).steps}).") from None
      utils.say("warning: checkpoint step %d in %s is damaged: %s; trying the previous one",
                s, cdir, e, err=True)
  if problems:
    raise CheckpointError(
        f"no intact checkpoint in {cdir} ({'; '.join(problems)}). Move the damaged step "
        f"directories out of {cdir} to start this run over, or use a new --workdir.")
  return None


def load(workdir: str, step: int | None = None, mesh=None, best: bool = False) -> Restored:
  """A run's newest intact checkpoint (or `step`; or with `best` its best-evaluated one) on
  `mesh` (default: one device).

  The loader for everything that reads a finished or running run (sample,
  evaluate): the same checks and fallback as a resumed training run.
  """
  from sagan_jax import parallel, state as state_lib
  workdir = integrity.resolve_workdir(workdir)
  mesh = mesh if mesh is not None else parallel.make_mesh(1)
  restored = find(workdir, lambda saved: state_lib.abstract_state(saved, mesh)[1], step=step,
                  best=best)
  if restored is None:
    raise CheckpointError(_no_checkpoint_message(workdir, best))
  return restored


def _drop_orbax_save_traceback(record: std_logging.LogRecord) -> bool:
  """Orbax's threads (and asyncio, for its tasks) log a failed background save as ERRORs
  with tracebacks; `poll`/`finish` report it as one message (traceback at INFO)."""
  from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname or (
      record.name == "asyncio" and "orbax" in record.getMessage())
  return not (record.levelno >= std_logging.ERROR and record.exc_info and from_orbax)


class Checkpointer:
  """Saves (asynchronously) when the loop asks, keeps the last K, resumes.

  Nothing is written until the first save.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, best: bool = False,
               keep: int | None = None):
    self.workdir = integrity.resolve_workdir(workdir)
    self.config = config
    self.best = best
    self.keep = keep or config.keep_checkpoints
    self.dir = checkpoint_dir(workdir, best)
    self._saver: ocp.AsyncCheckpointer | None = None
    self._pending: int | None = None     # step of the save in flight

  def latest_step(self) -> int | None:
    """The newest step directory (complete, not necessarily intact)."""
    steps = integrity.list_dir(self.dir).steps
    return steps[-1] if steps else None

  def restore(self, template, at_most: int | None = None) -> Restored | None:
    """The newest intact checkpoint (of a step <= at_most) restored onto `template` (the
    abstract state), or None."""
    restored = find(self.workdir, lambda _: template, config=self.config, at_most=at_most,
                    best=self.best)
    if restored is not None:
      utils.say("resuming from step %d (%s)", restored.step, self.dir / str(restored.step))
    return restored

  def _seal(self) -> None:
    # Orbax calls this in its commit thread once the items are written, before the rename.
    final = self.dir / str(self._pending)
    integrity.write_manifest(self._saver.get_temporary_path(final).get())

  def _make_saver(self) -> ocp.AsyncCheckpointer:
    self.dir.mkdir(parents=True, exist_ok=True)
    for logger in ("absl", "asyncio"):
      std_logging.getLogger(logger).addFilter(_drop_orbax_save_traceback)
    return ocp.AsyncCheckpointer(
        ocp.CompositeCheckpointHandler(),
        async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))

  def save(self, step: int, state, rollbacks: int = 0, meta: dict | None = None) -> None:
    """Starts saving `state` as step `step` (finishing the previous save first).

    meta: more JSON fields for the step's `meta` item (e.g. the best checkpoint's metric).
    """
    self.finish()
    final = self.dir / str(step)
    try:
      if self._saver is None:
        self._saver = self._make_saver()
      if final.exists():
        self._move_aside(step)
      self._pending = step
      self._saver.save(final, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(self.config.to_dict()),
          meta=ocp.args.JsonSave({"step": step, "rollbacks": rollbacks, **(meta or {})})))
    except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
      self._pending = None
      raise integrity.save_failed(step, self.dir, e) from e
    utils.say("saving checkpoint: %s", final)

  def _move_aside(self, step: int) -> None:
    """A damaged step directory this run now saves again is kept under another name."""
    if jax.process_index() == 0:
      aside = integrity.aside_name(self.dir, step)
      (self.dir / str(step)).rename(aside)
      utils.say("warning: moved the damaged checkpoint step %d to %s (delete it when no "
                "longer needed)", step, aside, err=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"sagan_move_aside_{step}")

  def poll(self) -> None:
    """Raises CheckpointError if the save in flight has already failed; never waits."""
    if self._pending is None:
      return
    try:
      self._saver.check_for_errors()
    except Exception as e:  # noqa: BLE001
      step, self._pending = self._pending, None
      logging.info("saving checkpoint step %d failed", step, exc_info=e)
      raise integrity.save_failed(step, self.dir, e) from e

  def finish(self, raise_errors: bool = True) -> None:
    """Waits for the save in flight; once it is complete and verified, applies keep-N."""
    step = self._pending
    if step is None:
      return
    try:
      self._saver.wait_until_finished()
      verdict = integrity.check(self.dir / str(step))
      if not verdict.ok or verdict.unverified:
        raise OSError(f"the written checkpoint does not verify: {verdict.problem or 'no manifest'}")
    except Exception as e:  # noqa: BLE001
      logging.info("saving checkpoint step %d failed", step, exc_info=e)
      error = integrity.save_failed(step, self.dir, e)
      if raise_errors:
        raise error from e
      logging.error("%s", error)
      return
    finally:
      self._pending = None
    if jax.process_index() == 0:
      self._prune(step)

  def close(self) -> None:
    """Stops the background saver (after `finish`); a later `save` starts a new one."""
    if self._saver is not None:
      saver, self._saver, self._pending = self._saver, None, None
      try:
        saver.close()
      except Exception as e:  # noqa: BLE001 - a save that failed was already reported
        logging.info("closing the checkpoint saver: %s", e)

  def _prune(self, newest: int) -> None:
    """Removes the oldest checkpoints beyond keep_checkpoints (`newest` verified).

    Each is renamed `N.deleting` before its files go, so a kill in between
    leaves no half-deleted step directory; leftovers are removed here.
    """
    listing = integrity.list_dir(self.dir)
    older = [s for s in listing.steps if s < newest]
    doomed = older[:max(0, len(older) - (self.keep - 1))]
    for s in doomed:
      (self.dir / str(s)).rename(self.dir / f"{s}{integrity.DELETING_MARK}")
    for name in listing.deleting + tuple(f"{s}{integrity.DELETING_MARK}" for s in doomed):
      (self.dir / name).rmtree()
      logging.info("removed %s (keep %d)", name, self.keep)


def read_config(workdir: str, step: int | None = None,
                best: bool = False) -> ml_collections.ConfigDict:
  """The config stored with a checkpoint (default: the newest one whose files verify)."""
  workdir = integrity.resolve_workdir(workdir)
  cdir = checkpoint_dir(workdir, best)
  steps = integrity.list_dir(cdir).steps
  config = _first_usable(cdir, _candidates(cdir, steps, step), step is not None,
                         lambda s: _verified_config(cdir / str(s))[0])
  if config is None:
    raise CheckpointError(_no_checkpoint_message(workdir, best))
  return config


def model_differences(saved: ml_collections.ConfigDict, config,
                      fields) -> list[tuple[str, Any, Any]]:
  """(field, saved, config value) of each of `fields` of `.model` that differs (as tuples)."""
  out = []
  for f in fields:
    a, b = saved.model.get(f), config.model.get(f)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
      a, b = tuple(a or ()), tuple(b or ())
    if a != b:
      out.append((f, a, b))
  return out


def _check_compatible(saved: ml_collections.ConfigDict, config, workdir: str) -> None:
  from sagan_jax.models import sagan
  diffs = [f"model.{f}: checkpoint {a!r} vs config {b!r}"
           for f, a, b in model_differences(saved, config, sagan.ARCH_FIELDS)]
  if saved.optim.n_critic != config.optim.n_critic:
    diffs.append(f"optim.n_critic: checkpoint {saved.optim.n_critic} vs config "
                 f"{config.optim.n_critic}")
  from sagan_jax import state as state_lib  # local: the state module is above this one
  extra_a, extra_b = state_lib.extra_names(saved), state_lib.extra_names(config)
  if extra_a != extra_b:
    diffs.append(f"state extras (ADA, LeCam): checkpoint {list(extra_a)} vs config "
                 f"{list(extra_b)}")
  if diffs:
    raise CheckpointError(
        f"{workdir} holds a run with a different model: " + "; ".join(diffs) +
        ". Use a new --workdir, or the same config as that run.")
