"""Orbax checkpoints of the whole train state plus the config that made it.

Layout: WORKDIR/checkpoints/<step>/{state, config}. Orbax writes each step
into a temporary directory and renames it when complete, so a killed save
never leaves a half-written checkpoint that looks valid. Every process takes
part in a save (multi-host); restoring places the arrays onto the current
mesh's shardings, whatever mesh wrote them.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sagan_jax import utils
from sagan_jax.errors import CheckpointError

# Config fields that define the shapes in the state: a resumed run must match.
_ARCH_FIELDS = ("resolution", "ch", "d_ch", "z_dim", "num_classes", "g_attention",
                "d_attention", "d_relu_shortcut")


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def manager(workdir: str, keep: int = 1, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "config"))


class Checkpointer:
  """Saves every N steps (the loop decides), keeps the last K, resumes."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.workdir = workdir
    self.config = config
    self.mngr = manager(workdir, config.keep_checkpoints)

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def save(self, step: int, state) -> None:
    self.mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(self.config.to_dict())))
    utils.say("saving checkpoint: %s", checkpoint_dir(self.workdir) / str(step))

  def wait(self) -> None:
    self.mngr.wait_until_finished()

  def restore_latest(self, template):
    """The latest checkpoint restored onto `template`'s shapes and shardings, or None.

    template: the abstract state (`state.abstract_state(config, mesh)`) or a real one.
    """
    step = self.mngr.latest_step()
    if step is None:
      return None
    saved = read_config(self.workdir, step)
    _check_compatible(saved, self.config, self.workdir)
    utils.say("resuming from %s", checkpoint_dir(self.workdir) / str(step))
    return restore_state(self.mngr, step, template, self.workdir)


class BestCheckpointer:
  """Keeps the one checkpoint with the best evaluation value in WORKDIR/checkpoints_best."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, mode: str):
    self.config = config
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda metrics: metrics["value"], best_mode=mode)
    self.mngr = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints_best", options=options,
                                      item_names=("state", "config"))

  def save(self, step: int, state, value: float) -> None:
    self.mngr.save(step, metrics={"value": float(value)}, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(self.config.to_dict())), force=True)

  def best_step(self) -> int | None:
    return self.mngr.best_step()

  def wait(self) -> None:
    self.mngr.wait_until_finished()


def _abstract(template):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, template)


def restore_state(mngr: ocp.CheckpointManager, step: int, template, workdir: str):
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(template))))
  except Exception as e:  # noqa: BLE001 - orbax raises many types for bad files
    raise CheckpointError(
        f"checkpoint step {step} in {checkpoint_dir(workdir)} could not be read "
        f"({type(e).__name__}: {str(e)[:300]}). It is damaged or from an incompatible "
        f"version. Move {checkpoint_dir(workdir) / str(step)} aside to resume from the "
        "previous checkpoint, or use a new --workdir to start over.") from e
  return restored["state"]


def read_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config stored with a checkpoint (the latest by default)."""
  cdir = checkpoint_dir(workdir)
  if step is None:
    if not cdir.exists():
      raise CheckpointError(f"no checkpoints in {cdir}: train first with "
                            f"`python -m sagan_jax.main --config ... --workdir {workdir}`.")
    step = manager(workdir, create=False).latest_step()
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {cdir}.")
  path = cdir / str(step) / "config" / "metadata"
  try:
    cfg = json.loads(path.read_text())
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"cannot read the config of checkpoint {cdir / str(step)} "
                          f"({type(e).__name__}: {e}); the checkpoint is damaged.") from e
  return merge_onto_defaults(cfg)


def merge_onto_defaults(saved: dict) -> ml_collections.ConfigDict:
  """The saved config over today's defaults: fields added since are filled in."""
  from sagan_jax import config_base
  base = config_base.base_config()

  def merge(node, values, prefix):
    for k, v in values.items():
      if k not in node:
        logging.warning("checkpoint config field %s%s is no longer used; ignored", prefix, k)
      elif isinstance(v, dict):
        merge(node[k], v, f"{prefix}{k}.")
      else:
        node[k] = tuple(v) if isinstance(node[k], tuple) else v

  merge(base, saved, "")
  return base


def _check_compatible(saved: ml_collections.ConfigDict, config, workdir: str) -> None:
  diffs = []
  for f in _ARCH_FIELDS:
    a, b = saved.model.get(f), config.model.get(f)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
      a, b = tuple(a or ()), tuple(b or ())
    if a != b:
      diffs.append(f"model.{f}: checkpoint {a!r} vs config {b!r}")
  if saved.optim.n_critic != config.optim.n_critic:
    diffs.append(f"optim.n_critic: checkpoint {saved.optim.n_critic} vs config "
                 f"{config.optim.n_critic}")
  if diffs:
    raise CheckpointError(
        f"{workdir} holds a run with a different model: " + "; ".join(diffs) +
        ". Use a new --workdir, or the same config as that run.")
