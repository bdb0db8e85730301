"""The checks a training run makes before it reads data, compiles or writes anything.

`main` runs them before it waits for the other hosts of a multi-process job
(`jax.distributed.initialize` can wait minutes), and `train_and_evaluate` runs
them again for callers that use the library directly; both get the same
one-line errors. The checks themselves live with what they check:
`config_base.validate` (each field's type and range), the `check_config` of
every module that owns a field's choices (`CHECKERS`), and
`integrity.check_workdir` (the run directory). A module that adds config
fields with choices of its own adds its `check_config` to `CHECKERS`.
"""

from __future__ import annotations

import ml_collections

from sagan_jax import augment, collapse, config_base, integrity, losses, regularizers
from sagan_jax.data import source, subset
from sagan_jax.evaluation import training_evals
from sagan_jax.models import sagan

# The modules whose check_config(config) checks the fields whose choices they own, in order.
CHECKERS = (sagan, losses, source, collapse, augment, regularizers, subset, training_evals)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first field that cannot work (every check of a config)."""
  config_base.validate(config)
  for module in CHECKERS:
    module.check_config(config)


def preflight(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Raises a `UserError` naming the first problem; returns `workdir` resolved (absolute,
  `~` expanded; gs:// as given)."""
  workdir = integrity.resolve_workdir(workdir)
  check_config(config)
  integrity.check_workdir(workdir)
  return workdir
