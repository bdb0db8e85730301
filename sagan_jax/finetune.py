"""Fine-tuning: a fresh run that starts from another run's (or a converted checkpoint's) weights.

`config.init_from = "RUN_DIR"` (its newest intact checkpoint) or
`"RUN_DIR:STEP"` is read with the verified loader (`checkpointing.load`:
manifest checked, damaged checkpoints skipped). The new run starts at step 0
with G, the EMA generator and D taken from it, SN vectors and BN statistics
included, and fresh optimisers (and fresh ADA / LeCam state).

Class tables (G's conditional-BN gains and biases `block*/bn*/{gamma,beta}`,
D's projection embedding `embed/embedding` and its SN vector):
  - `config.init_class_map = (a, b, ...)`: new class k gets old class map[k]'s
    rows (the SN vector's entries likewise, renormalised);
  - no map and equal class counts: copied;
  - otherwise: left at their fresh initialisation (said on the console).
Every other tensor must exist in both with the same shape; the first that
does not is refused with a CheckpointError naming it. `freeze_d_blocks`
(FreezeD) is applied in the D update (`step.frozen_d_modules`).
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath

from sagan_jax import checkpointing, integrity, parallel, utils
from sagan_jax.errors import CheckpointError, ConfigError
from sagan_jax.state import TrainState


def parse(spec: str) -> tuple[str, int | None]:
  """'RUN_DIR' -> (RUN_DIR, None); 'RUN_DIR:STEP' -> (RUN_DIR, STEP)."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit() and head:
    return head, int(tail)
  return spec, None


def is_class_table(who: str, keys: tuple[str, ...], ndim: int) -> bool:
  """Whether a leaf of G's or D's variables has one row per class."""
  if who == "d":
    return bool(keys) and keys[1:2] == ("embed",)
  return keys[0] == "params" and keys[-1] in ("gamma", "beta") and ndim == 2


def _class_rows(old: np.ndarray, new: np.ndarray, keys, class_map) -> np.ndarray:
  if new.ndim == 0:   # the embedding's SN sigma: recomputed at D's next update
    return old.astype(new.dtype)
  rows = old[np.asarray(class_map)]
  if keys[-1] == "u":   # the SN vector over the classes: keep it a unit vector
    rows = rows / max(float(np.linalg.norm(rows)), 1e-12)
  return rows.astype(new.dtype)


def _transfer(who: str, label: str, old_tree, new_tree, tables: str, class_map, source: str):
  """new_tree's structure with old_tree's values (class tables per `tables`).

  who: 'g' (G-shaped: G, the EMA) or 'd'; label: the state field, for messages.
  """
  old_leaves = {tuple(str(getattr(k, "key", k)) for k in p): v
                for p, v in jax.tree_util.tree_flatten_with_path(old_tree)[0]}
  flat, treedef = jax.tree_util.tree_flatten_with_path(new_tree)
  out = []
  for path, new in flat:
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    name = f"{label}/{'/'.join(keys)}"
    new = np.asarray(new)
    if is_class_table(who, keys, new.ndim) and tables != "copy":
      old = old_leaves.get(keys)
      out.append(new if tables == "fresh" or old is None
                 else _class_rows(np.asarray(old), new, keys, class_map))
      continue
    if keys not in old_leaves:
      raise CheckpointError(f"config.init_from={source!r}: that run has no tensor {name} "
                            f"{new.shape}; it is another architecture (compare its config).")
    old = np.asarray(old_leaves[keys])
    if old.shape != new.shape:
      raise CheckpointError(f"config.init_from={source!r}: tensor {name} has shape "
                            f"{old.shape} there but {new.shape} in this config; the "
                            "architectures differ (compare the model fields of both configs).")
    out.append(old.astype(new.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _tables(config, old_classes: int, source: str) -> str:
  """'copy', 'map' or 'fresh' for the class tables, checking init_class_map's range."""
  class_map, n = tuple(config.init_class_map), config.model.num_classes
  if class_map:
    bad = [k for k in class_map if k >= old_classes]
    if bad:
      raise ConfigError(f"config.init_class_map={class_map} is invalid: class {bad[0]} does "
                        f"not exist in {source} (it has {old_classes} classes).")
    return "map"
  return "copy" if n == old_classes else "fresh"


def _existing_run_dir(source: str) -> tuple[str, int | None]:
  run_dir, step = parse(source)
  if not epath.Path(run_dir).exists():
    raise CheckpointError(f"config.init_from={source!r}: {run_dir} does not exist; give the "
                          "directory of a training run (or of a converted checkpoint).")
  return run_dir, step


def check_source(config, workdir: str) -> None:
  """The init_from checks that need no restore and no compile (before a run builds anything):
  the source exists and holds a verified checkpoint, its model has this config's shapes but
  for the class tables, init_class_map is within its classes. A workdir that holds
  checkpoints already is a fine-tuning run being resumed: init_from is not read again."""
  if not config.init_from or integrity.list_dir(checkpointing.checkpoint_dir(workdir)).steps:
    return
  from sagan_jax.models import sagan
  source = config.init_from
  run_dir, step = _existing_run_dir(source)
  try:
    old = checkpointing.read_config(run_dir, step=step)
  except CheckpointError as e:
    raise CheckpointError(f"config.init_from={source!r}: {e}") from None
  _tables(config, old.model.num_classes, source)
  fields = [f for f in sagan.SHAPE_FIELDS if f != "num_classes"]   # class tables: _tables
  diffs = [f"model.{f}: {a!r} there, {b!r} here"
           for f, a, b in checkpointing.model_differences(old, config, fields)]
  if diffs:
    raise CheckpointError(f"config.init_from={source!r}: " + "; ".join(diffs) + "; the "
                          "architectures differ (start from a copy of that run's command; "
                          "only the class count may change).")


def init_from(config, fresh: TrainState, mesh) -> TrainState:
  """`fresh` (a new run's state) with G, EMA and D from config.init_from (see module doc)."""
  source = config.init_from
  run_dir, step = _existing_run_dir(source)
  try:
    old = checkpointing.load(run_dir, step=step, mesh=parallel.make_mesh(1))
  except CheckpointError as e:
    raise CheckpointError(f"config.init_from={source!r}: {e}") from None
  tables = _tables(config, old.config.model.num_classes, source)
  host_old, host_new = jax.device_get(old.state), jax.device_get(fresh)
  cmap = tuple(config.init_class_map)
  parts = {f: _transfer("d" if f == "d" else "g", f, getattr(host_old, f),
                        getattr(host_new, f), tables, cmap, source)
           for f in ("g", "ema", "d")}
  rep = parallel.replicated(mesh)
  parts = jax.device_put(parts, rep)
  what = {"copy": "copied", "map": f"rows of old classes {cmap}",
          "fresh": (f"fresh ({old.config.model.num_classes} classes there, "
                    f"{config.model.num_classes} here, no init_class_map)")}[tables]
  utils.say("init_from %s: G, EMA and D from step %d (SN and BN state included), fresh "
            "optimisers; class tables: %s", run_dir, old.step, what)
  return fresh.replace(**parts)
