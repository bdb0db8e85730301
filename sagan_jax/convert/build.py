"""A peer's checkpoint folder -> our TrainState -> an ordinary sagan_jax run directory.

`convert(kind, weights_dir, config)` reads the folder with the framework's
module, sets the config fields the peer's code fixes (SN/BN epsilons, BN
momentum, Adam's eps and betas; a field given on the command line wins),
checks the architecture, fills G, the EMA G, D and both Adam states against
`state.abstract_state(config)`, and returns the state; `write_run` saves it
with the config as step N of WORKDIR/checkpoints, which `main` (to continue
training), `sample` and `evaluate` read like any run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sagan_jax import checkpointing, integrity, preflight
from sagan_jax import state as state_lib
from sagan_jax.convert import biggan_pytorch, common, studiogan
from sagan_jax.errors import CheckpointError

FRAMEWORKS = {"biggan-pytorch": biggan_pytorch, "studiogan": studiogan}


@dataclasses.dataclass
class Result:
  config: ml_collections.ConfigDict
  models: state_lib.Models
  state: state_lib.TrainState
  source: common.Source
  changes: list[str]    # config fields set to the source's values
  notes: list[str]      # what the user should know (no EMA, fresh optimiser, lr differences)


def convert(kind: str, weights_dir: str, config: ml_collections.ConfigDict, select: str = "",
            use_optimizer: bool = True, overridden: frozenset[str] = frozenset()) -> Result:
  """The TrainState of a peer's checkpoint folder under `config` (modified in place)."""
  if kind not in FRAMEWORKS:
    raise CheckpointError(f"--from {kind!r}: use one of {sorted(FRAMEWORKS)}")
  module = FRAMEWORKS[kind]
  src = module.read(weights_dir, select)
  if not use_optimizer:
    src.optim = {}
  _optimizer_settings(src)
  changes = _apply_settings(config, src, overridden)
  _check_arch(config, src)
  if config.model.num_classes == 0:
    raise CheckpointError("config.model.num_classes is 0: only class-conditional SAGANs "
                          "(cBN + projection D) convert.")
  if not (config.model.g_sn and config.model.d_sn) or config.model.g_residual \
      or config.model.d_residual:
    raise CheckpointError("config.model.g_sn/d_sn are off or g_residual/d_residual are set: "
                          "the peers' SAGANs have SN on G and D and no residual control; "
                          "convert with the defaults (model.g_sn=True, model.d_sn=True, "
                          "model.g_residual=(), model.d_residual=()).")
  preflight.check_config(config)
  models, template = state_lib.abstract_state(config)
  mm = module.model_map(src)
  eps = config.model.sn_eps
  g_tb = common.TreeBuilder(_shapes(template.g), src.g, eps)
  mm.generator(g_tb, models.generator)
  d_tb = common.TreeBuilder(_shapes(template.d), src.d, eps)
  mm.discriminator(d_tb, models.discriminator)
  g, d = g_tb.result(), d_tb.result()
  notes = list(src.notes)
  if src.ema is not None:
    ema_tb = common.TreeBuilder(_shapes(template.ema), src.ema, eps)
    mm.generator(ema_tb, models.generator)
    ema = ema_tb.result()
  else:
    ema = jax.tree.map(np.copy, g)
    notes.append("no EMA generator in the folder: the EMA starts as a copy of G")
  opt, counts = {}, {}
  for role, tb, tx, params in (("G", g_tb, models.g_tx, g["params"]),
                               ("D", d_tb, models.d_tx, d["params"])):
    empty = tx.init(params)
    if role in src.optim:
      optim, name = src.optim[role]
      adam = common.convert_adam(optim, tb.sd, tb.moments, params, name)
      opt[role.lower()], counts[role] = common.fill_optax_state(empty, adam), adam.count
      notes += _lr_note(role, adam.hyper.get("lr"), config)
    else:
      opt[role.lower()] = empty
      notes.append(f"no {role} optimiser state: continued training starts {role}'s Adam afresh")
  step = src.step if src.step is not None else counts.get("G", 0)
  state = state_lib.TrainState(step=jnp.asarray(step, jnp.int32), g=g, ema=ema, d=d, opt=opt)
  state = jax.tree.map(jnp.asarray, state)
  _check_like(state, template)
  return Result(config, models, state, src, changes, notes)


def check_new_workdir(workdir: str) -> None:
  """Refuses a workdir that already holds checkpoints (nothing is overwritten)."""
  cdir = checkpointing.checkpoint_dir(workdir)
  if integrity.list_dir(cdir).steps:
    raise CheckpointError(f"{cdir} already holds checkpoints; convert into a new --workdir.")


def write_run(workdir: str, result: Result) -> str:
  """Saves the converted state as an ordinary checkpoint; refuses a workdir that has one."""
  check_new_workdir(workdir)
  ckpt = checkpointing.Checkpointer(workdir, result.config)
  step = int(result.state.step)
  ckpt.save(step, result.state)
  ckpt.finish()  # waits, verifies the written files
  ckpt.close()
  return str(checkpointing.checkpoint_dir(workdir) / str(step))


def _shapes(tree) -> dict:
  """One model's variables as nested dicts of ShapeDtypeStructs (a TreeBuilder template)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), dict(tree))


def _optimizer_settings(src: common.Source) -> None:
  """Adam's betas and eps as the source's optimiser state records them (G's; D's must agree)."""
  hyper = {}
  for role in ("G", "D"):
    if role in src.optim:
      group = src.optim[role][0].get("param_groups", [{}])[0]
      hyper[role] = (tuple(group.get("betas", ())), group.get("eps"))
  if not hyper:
    return
  (b1, b2), eps = next(iter(hyper.values()))
  src.settings.update({"optim.beta1": float(b1), "optim.beta2": float(b2),
                       "optim.eps": float(eps)})
  if len(set(hyper.values())) > 1:
    src.notes.append(f"G and D used different Adam betas/eps {hyper}; both continue with G's")


def _apply_settings(config, src: common.Source, overridden: frozenset[str]) -> list[str]:
  changes = []
  for field, value in src.settings.items():
    node, name = _field(config, field)
    if field in overridden:
      if not np.isclose(node[name], value):
        src.notes.append(f"config.{field}={node[name]!r} from the command line "
                         f"(the {src.framework} run used {value!r})")
      continue
    if node[name] != value:
      changes.append(f"config.{field}: {node[name]!r} -> {value!r}")
      node[name] = type(node[name])(value)
  return changes


def _field(config, dotted: str) -> tuple[Any, str]:
  *parents, name = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  return node, name


def _check_arch(config, src: common.Source) -> None:
  """The architecture the source's own training config states against ours, field by field."""
  m = config.model
  ours = {"model.resolution": m.resolution, "model.ch": m.ch, "model.d_ch": m.d_ch or m.ch,
          "model.z_dim": m.z_dim, "model.num_classes": m.num_classes,
          "model.g_attention": tuple(sorted(m.g_attention)),
          "model.d_attention": tuple(sorted(m.d_attention))}
  differ, fixes = [], []
  for field, (value, option) in src.arch.items():
    if ours[field] != value:
      shown = (",".join(map(str, value)) or "()") if isinstance(value, tuple) else value
      differ.append(f"{option}={value!r} (the config has config.{field}={ours[field]!r})")
      fixes.append(f"--config.{field}={shown}")
  if differ:
    raise CheckpointError(
        f"the {src.framework} run's architecture differs from the config's: "
        f"{'; '.join(differ)}. Add {' '.join(fixes)} (or use a config of that architecture).")


def _lr_note(role: str, lr, config) -> list[str]:
  ours = config.optim.g_lr if role == "G" else config.optim.d_lr
  if lr is None or np.isclose(float(lr), ours):
    return []
  field = "g_lr" if role == "G" else "d_lr"
  return [f"{role}'s learning rate was {float(lr):g}; continued training uses "
          f"config.optim.{field}={ours:g}"]


def _check_like(state, template) -> None:
  """A bug guard: the converted state has exactly the template's tree, shapes and dtypes."""
  want, want_def = jax.tree.flatten(template)
  got, got_def = jax.tree.flatten(state)
  if want_def != got_def or any((a.shape, a.dtype) != (b.shape, b.dtype)
                                for a, b in zip(want, got)):
    raise ValueError("converted state does not match abstract_state(config)")
